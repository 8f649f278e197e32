/**
 * OCI runtime config (config.json) for a function's container under runc: the image's process
 * settings, a network namespace joined by path, cgroup limits from the manifest, Docker's default
 * capability set, the function's system-call filter (seccomp-profile.ts), no host mounts and no new
 * privileges.
 */
import type { SeccompProfileFile } from '../../shared/seccomp.ts'
import { SECRETS_MOUNT } from '../../shared/secrets.ts'

export interface OciSpecInput {
  readonly hostname: string
  /** Absolute path of the (overlay) rootfs. */
  readonly rootfs: string
  readonly args: readonly string[]
  readonly env: readonly string[]
  readonly cwd: string
  readonly uid: number
  readonly gid: number
  /** An empty directory, bind-mounted read-only over host information the container must not see. */
  readonly emptyDir: string
  /** Network namespace to join (`/var/run/netns/<name>`). */
  readonly netnsPath: string
  /** cgroupfs path relative to each hierarchy's root, e.g. `/initless/<id>`. */
  readonly cgroupsPath: string
  /**
   * What the container sees at /sys/fs/cgroup: its own cgroup's directories, bind-mounted read-only
   * (cgroups.ts containerCgroupMounts). Binds, unlike runc's `cgroup` mount (a tmpfs plus binds), are external to
   * CRIU: restoring a tmpfs runs tar, ~15 ms each on the cold-start path.
   */
  readonly cgroupMounts: readonly { readonly destination: string; readonly source: string }[]
  readonly memoryBytes: number
  /** CPU limit; omitted for restores, whose limit the executor sets once CRIU is done (cgroups.ts). */
  readonly cpus?: number
  readonly pids: number
  /**
   * CRIU configuration file runc hands to CRIU (`org.criu.config`) on checkpoint and on restore
   * (criu.ts: criuDumpConfigText for a checkpoint, criuRestoreConfigText for a restore).
   */
  readonly criuConfig?: string
  /** `linux.seccomp`: the filter runc installs before it executes the process. Unset: none. */
  readonly seccomp?: SeccompProfileFile
  /**
   * Bind-mounted read-only at /run/secrets when set (functions that declare secrets only): an
   * empty directory at bake, the instance's secrets directory at restore. A bind mount is external
   * to CRIU (its key is the destination), so every restore maps it to its own source.
   */
  readonly secretsSource?: string
}

/**
 * Version of the sandbox layout this file produces. A checkpoint records the mount namespace, so a
 * snapshot only restores into the layout it was taken in: bump this on any change to the mounts,
 * and every snapshot is re-baked (it is part of the snapshot identity).
 */
export const SANDBOX_LAYOUT_VERSION = 3

/** Docker's default capabilities: what container images expect to have as root. */
export const DEFAULT_CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
] as const

const CPU_PERIOD_US = 100_000

export function buildOciSpec(input: OciSpecInput): Record<string, unknown> {
  const caps = [...DEFAULT_CAPABILITIES]
  return {
    ociVersion: '1.0.2-dev',
    process: {
      terminal: false,
      user: { uid: input.uid, gid: input.gid },
      args: [...input.args],
      env: [...input.env],
      cwd: input.cwd,
      capabilities: { bounding: caps, effective: caps, permitted: caps },
      // No rlimits: the process inherits the executor's, as Docker containers inherit dockerd's. Raising
      // a hard limit here fails (runc sets it after dropping CAP_SYS_RESOURCE).
      noNewPrivileges: true,
    },
    root: { path: input.rootfs, readonly: false },
    hostname: input.hostname,
    mounts: [
      // No tmpfs on /dev or /dev/shm (runc's defaults): CRIU dumps every tmpfs as a tarball and
      // restores it by running tar, ~13-70 ms each on the cold-start path. /dev and /dev/shm stay
      // plain directories of the copy-on-write rootfs (runc creates the device nodes there; what
      // a function leaves in /dev/shm before its checkpoint travels in the snapshot's layer).
      { destination: '/proc', type: 'proc', source: 'proc' },
      {
        destination: '/dev/pts',
        type: 'devpts',
        source: 'devpts',
        options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
      },
      {
        destination: '/dev/mqueue',
        type: 'mqueue',
        source: 'mqueue',
        options: ['nosuid', 'noexec', 'nodev'],
      },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      // Masked with an empty read-only bind instead of runc's tmpfs mask: a bind mount is external
      // to CRIU (runc maps it at restore), a tmpfs costs a tar run per restore.
      {
        destination: '/sys/firmware',
        type: 'bind',
        source: input.emptyDir,
        options: ['rbind', 'ro', 'nosuid', 'noexec', 'nodev'],
      },
      ...input.cgroupMounts.map((m) => ({
        destination: m.destination,
        type: 'bind',
        source: m.source,
        options: ['bind', 'ro', 'nosuid', 'noexec', 'nodev'],
      })),
      ...(input.secretsSource
        ? [
            {
              destination: SECRETS_MOUNT,
              type: 'bind',
              source: input.secretsSource,
              options: ['bind', 'ro', 'nosuid', 'noexec', 'nodev'],
            },
          ]
        : []),
    ],
    annotations: input.criuConfig ? { 'org.criu.config': input.criuConfig } : {},
    linux: {
      ...(input.seccomp ? { seccomp: input.seccomp } : {}),
      cgroupsPath: input.cgroupsPath,
      resources: {
        devices: [{ allow: false, access: 'rwm' }],
        memory: { limit: input.memoryBytes, swap: input.memoryBytes },
        ...(input.cpus === undefined
          ? {}
          : { cpu: { quota: Math.round(input.cpus * CPU_PERIOD_US), period: CPU_PERIOD_US } }),
        pids: { limit: input.pids },
      },
      namespaces: [
        { type: 'pid' },
        { type: 'network', path: input.netnsPath },
        { type: 'ipc' },
        { type: 'uts' },
        { type: 'mount' },
      ],
      // Files are masked by binding /dev/null over them (external to CRIU, cheap to restore). runc
      // masks directories with a tmpfs, which CRIU restores by running tar (~15 ms each), and no
      // bind may target /proc: Docker's masked directories (/proc/acpi, /proc/asound, /proc/scsi)
      // are read-only here instead, so nothing can be written through them.
      maskedPaths: [
        '/proc/kcore',
        '/proc/keys',
        '/proc/latency_stats',
        '/proc/timer_list',
        '/proc/timer_stats',
        '/proc/sched_debug',
      ],
      readonlyPaths: [
        '/proc/acpi',
        '/proc/asound',
        '/proc/scsi',
        '/proc/bus',
        '/proc/fs',
        '/proc/irq',
        '/proc/sys',
        '/proc/sysrq-trigger',
      ],
    },
  }
}

/**
 * The container's mounts CRIU treats as external in a checkpoint runc took (runc's keys): each bind
 * mount under its destination, and `/dev/null`, the source of every masked path. A restore maps
 * each key to this sandbox's source.
 */
export function criuExternalMounts(spec: Record<string, unknown>): { key: string; source: string }[] {
  const mounts = (spec.mounts ?? []) as { destination: string; type?: string; source: string }[]
  const out = mounts.filter((m) => m.type === 'bind').map((m) => ({ key: m.destination, source: m.source }))
  const linux = (spec.linux ?? {}) as { maskedPaths?: string[] }
  if (linux.maskedPaths?.length) out.push({ key: '/dev/null', source: '/dev/null' })
  return out
}

/** Parse a Docker image `User` ("", "0", "1000:1000"). Names need /etc/passwd: only numeric ids here. */
export function parseImageUser(user: string | undefined): { uid: number; gid: number } {
  if (!user) return { uid: 0, gid: 0 }
  const m = /^(\d+)(?::(\d+))?$/.exec(user)
  if (!m) throw new Error(`image user '${user}' is not numeric (uid[:gid]); set USER to a numeric id`)
  const uid = Number(m[1])
  return { uid, gid: m[2] === undefined ? uid : Number(m[2]) }
}
