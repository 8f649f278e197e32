/**
 * Sandboxes: everything an instance needs before its process exists — a network namespace with its
 * own address, a copy-on-write rootfs, a cgroup path, a runc bundle and a CRIU work dir. Preparing
 * one is the part of a cold start the pre-started pool takes off the request path.
 *
 * Layout of one sandbox (all under <state>/instances/<id>, mode 0700):
 *   bundle/config.json   runc bundle; bundle/rootfs is the overlay mount point
 *   layer/upper/ work/   overlay upper and work dirs, on a tmpfs of the function's disk size
 *   criu/                CRIU work dir (restore.log, lazy-pages.socket)
 *   output.log           the function's stdout and stderr
 *   sandbox.json         what reconciliation needs after an executor crash
 */
import { mkdirSync } from 'node:fs'
import { mkdir, rename, rm, statfs, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Egress, Manifest } from '../../shared/manifest.ts'
import type { SeccompProfileFile } from '../../shared/seccomp.ts'
import type { SecretValue } from '../../shared/secrets.ts'
import { InitlessError } from '../../shared/errors.ts'
import {
  applySandboxLimits,
  containerCgroupMounts,
  createCgroup,
  destroyCgroup,
  ensureCgroupSkeleton,
  prepareCgroupParent,
  readCgroupLayout,
  readLimitEvents,
  SANDBOX_CGROUP_PARENT,
  setCpuLimit,
  type CgroupLayout,
  type CgroupLimitEvents,
} from '../adapters/cgroups.ts'
import { criuDumpConfigText, type ExternalMount } from '../adapters/criu.ts'
import { cgroupUsage, freezeCgroup, thawCgroup, type CgroupUsage } from '../adapters/freezer.ts'
import { vethName, type IpAllocator, type NamespaceHandle, type NetworkManager } from '../adapters/network.ts'
import { buildOciSpec, criuExternalMounts } from './oci-spec.ts'
import { probeRestorePath, type RestorePath } from './restore-path.ts'
import type { Mounter } from '../adapters/rootfs.ts'
import type { SandboxHelper } from '../adapters/sandbox-helper.ts'
import type { Runc } from '../adapters/runc.ts'
import type { SecretFiles, SecretOwner } from './secret-files.ts'

export const NETNS_PREFIX = 'initless-'

export interface ProcessSpec {
  readonly args: readonly string[]
  readonly env: readonly string[]
  readonly cwd: string
  readonly uid: number
  readonly gid: number
}

export interface SandboxRequest {
  readonly id: string
  readonly fn: string
  /** Overlay lower dirs, top-most first (snapshot layer, then the image's rootfs). */
  readonly lowers: readonly string[]
  readonly process: ProcessSpec
  readonly memoryBytes: number
  readonly cpus: number
  readonly pids: number
  /**
   * Size of the writable layer: `layer/` gets a tmpfs of this size holding the overlay's upper and
   * work dirs (ENOSPC past it). Unset: the upper dir is a plain directory of the state dir.
   */
  readonly diskBytes?: number
  /** A restore's sandbox gets its CPU limit once CRIU is done (limitCpu), not from runc. */
  readonly forRestore: boolean
  /** The function's network.egress (default allow): it names the instance's veth (firewall.ts). */
  readonly egress?: Egress
  /**
   * The system-call filter runc installs when it runs the process (a bake; a restore gets the
   * filter dumped with the process from CRIU). Unset: none.
   */
  readonly seccomp?: SeccompProfileFile
  /**
   * The function declares secrets: /run/secrets is a read-only bind mount, of an empty directory
   * for a bake (no value is ever in a snapshot), of the instance's directory on the secrets tmpfs
   * for a restore (secret-files.ts). Without secrets there is no such mount at all.
   */
  readonly secrets?: boolean
}

export interface Sandbox {
  readonly id: string
  readonly fn: string
  readonly dir: string
  readonly bundle: string
  readonly rootfs: string
  readonly criuWorkDir: string
  readonly criuConfig: string
  readonly logFile: string
  readonly pidFile: string
  readonly netns: NamespaceHandle
  readonly lowers: readonly string[]
  /** CPU limit; a restore's sandbox gets it only when CRIU is done (SandboxManager.limitCpu). */
  readonly cpus: number
  /**
   * Set when the sandbox is ready for `criu restore` run directly (criu.ts): its cgroup already has
   * the limits and device rules runc would set. Unset where the restore path is `runc restore`
   * (SandboxManager.restorePath: cgroup v2 without the sandbox helper's eBPF device filter).
   */
  readonly direct?: { readonly externalMounts: readonly ExternalMount[] }
  /** The directory bind-mounted at /run/secrets (a restore's sandbox of a function with secrets). */
  readonly secretsDir?: string
}

/** Limits a sandbox hit: its cgroup's counters, and whether its writable layer is full. */
export interface SandboxLimitEvents extends CgroupLimitEvents {
  readonly diskFull: boolean
}

/** A writable layer with less than this free is full: no write the function tries fits any more. */
export const DISK_FULL_BELOW_BYTES = 64 * 1024

export interface SandboxManager {
  prepare(req: SandboxRequest): Promise<Sandbox>
  /**
   * How this host's restores run (direct or through runc) and why; probed once (again only after a
   * helper that did not answer).
   */
  restorePath(): Promise<RestorePath>
  /**
   * The CRIU work dir a sandbox with this id gets, created now: a restore starts its lazy-pages
   * daemon there while the rest of the sandbox is being prepared.
   */
  workDir(id: string): Promise<string>
  /** Apply the CPU limit a restore's sandbox was prepared without (call once the restore is done). */
  limitCpu(sandbox: Pick<Sandbox, 'id' | 'cpus'>): Promise<void>
  /** Freeze (waiting until every task stopped) or thaw the sandbox's cgroup (standby instances). */
  setFrozen(sandbox: Pick<Sandbox, 'id'>, isFrozen: boolean): Promise<void>
  /** The memory the sandbox's cgroup holds and the CPU time its tasks used. */
  usage(sandbox: Pick<Sandbox, 'id'>): Promise<CgroupUsage>
  /** The limits the sandbox hit so far (read before destroy: its cgroup goes with it). */
  limitEvents(sandbox: Pick<Sandbox, 'id' | 'dir'>): Promise<SandboxLimitEvents>
  /**
   * Stop whatever runs in the sandbox and release all it holds. Idempotent; runs every step.
   * `keepUpperAt` moves the overlay's upper dir there first (a bake keeps it in its snapshot).
   */
  /**
   * Write the instance's secret values where its restore bind-mounts them (before the restore).
   * Rejects for a sandbox prepared without secrets.
   */
  fillSecrets(
    sandbox: Pick<Sandbox, 'id' | 'secretsDir'>,
    values: readonly SecretValue[],
    owner: SecretOwner,
  ): Promise<void>
  destroy(
    sandbox: Pick<Sandbox, 'id' | 'dir' | 'rootfs' | 'netns' | 'direct' | 'secretsDir'>,
    opts?: { keepUpperAt?: string },
  ): Promise<void>
}

/**
 * `make()` run once and shared by every caller; a failure, or a result `keep` rejects, is
 * forgotten once it is known, so the next call tries again.
 */
function once<T>(make: () => Promise<T>, keep: (value: T) => boolean = () => true): () => Promise<T> {
  let running: Promise<T> | undefined
  return () =>
    (running ??= make().then(
      (value) => {
        if (!keep(value)) running = undefined
        return value
      },
      (err: unknown) => {
        running = undefined
        throw err
      },
    ))
}

/**
 * What a sandbox request takes from the manifest: resource limits, egress, and whether the
 * function has secrets (the /run/secrets mount, at bake and at every restore alike).
 */
export function sandboxLimits(
  m: Manifest,
): Pick<SandboxRequest, 'memoryBytes' | 'cpus' | 'pids' | 'diskBytes' | 'egress' | 'secrets'> {
  const { memory, cpus, pids, disk } = m.resources
  return {
    memoryBytes: memory,
    cpus,
    pids,
    diskBytes: disk,
    egress: m.network.egress,
    ...(m.secrets?.length ? { secrets: true } : {}),
  }
}

export function instancesDir(stateDir: string): string {
  return join(stateDir, 'instances')
}

export function cgroupPath(id: string): string {
  return `${SANDBOX_CGROUP_PARENT}/${id}`
}

export function netnsName(id: string): string {
  return `${NETNS_PREFIX}${id}`
}

export interface SandboxManagerDeps {
  readonly stateDir: string
  readonly network: Pick<NetworkManager, 'ensureBridge' | 'create' | 'destroy'>
  readonly ips: Pick<IpAllocator, 'allocate' | 'release'>
  readonly mounter: Pick<Mounter, 'mountOverlay' | 'unmount' | 'list' | 'copyTree'>
  readonly runc: Pick<Runc, 'delete'>
  /**
   * Creates the sandbox cgroup and writes its limits in one request each (else node's fs); on
   * cgroup v2 attaches the device filter, without which restores go through runc.
   */
  readonly helper?: SandboxHelper | undefined
  /** Why there is no helper (`sandbox helper off`), for restorePath's reason. */
  readonly withoutHelper?: string
  /** The host's cgroup layout (default: from /proc/self/mountinfo; tests pass a fake root). */
  readonly readLayout?: () => Promise<CgroupLayout>
  /**
   * Where restores of functions with secrets find them. Without (the CLI's bakes): their
   * /run/secrets is the empty directory, and fillSecrets rejects.
   */
  readonly secrets?: Pick<SecretFiles, 'dirFor' | 'prepare' | 'fill' | 'remove'>
}

/** Promise.all that waits for every promise, then rejects with the first failure if any. */
async function allSettled<T extends readonly unknown[]>(promises: {
  [K in keyof T]: Promise<T[K]>
}): Promise<T> {
  const results = await Promise.allSettled(promises)
  const failed = results.find((r) => r.status === 'rejected')
  if (failed) throw failed.reason
  return results.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T
}

/** Where one sandbox's parts live (all under its dir). */
interface SandboxPaths {
  readonly dir: string
  readonly bundle: string
  readonly rootfs: string
  readonly criuWorkDir: string
  readonly criuConfig: string
}

function sandboxPaths(dir: string): SandboxPaths {
  const bundle = join(dir, 'bundle')
  return {
    dir,
    bundle,
    rootfs: join(bundle, 'rootfs'),
    criuWorkDir: join(dir, 'criu'),
    criuConfig: join(dir, 'criu.conf'),
  }
}

/** The writable layer's mount point (a tmpfs when the sandbox has a disk size). */
export function layerDir(sandboxDir: string): string {
  return join(sandboxDir, 'layer')
}

/** Is the writable layer's tmpfs full? A sandbox without one (no disk size) never is. */
async function layerFull(sandboxDir: string): Promise<boolean> {
  const dir = layerDir(sandboxDir)
  const [fs, parent] = await Promise.all([statfs(dir), statfs(sandboxDir)]).catch(() => [])
  // The same file system as the sandbox dir: no tmpfs there (unsized, or already unmounted).
  if (!fs || !parent || (fs.type === parent.type && fs.blocks === parent.blocks)) return false
  return fs.bavail * fs.bsize < DISK_FULL_BELOW_BYTES
}

/** The overlay's upper and work dirs: in the layer's tmpfs, or directly in the sandbox dir. */
function overlayDirs(dir: string, sized: boolean): { upper: string; work: string } {
  const base = sized ? layerDir(dir) : dir
  return { upper: join(base, 'upper'), work: join(base, 'work') }
}

/**
 * Move a sandbox's upper dir to `to`: a rename, or a copy (`cp -a`: whiteouts and overlay xattrs
 * kept) when it lies on the layer's tmpfs.
 */
async function keepUpper(mounter: Pick<Mounter, 'copyTree'>, dir: string, to: string): Promise<void> {
  const plain = join(dir, 'upper')
  const ok = await rename(plain, to).then(
    () => true,
    (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err
      return false
    },
  )
  if (!ok) await mounter.copyTree(overlayDirs(dir, true).upper, to)
}

/** The runc bundle's config.json and the sandbox's record, from its request and its parts. */
function describeSandbox(
  req: SandboxRequest,
  at: SandboxPaths,
  host: {
    ns: NamespaceHandle
    cgroups: CgroupLayout
    cgroupSkeleton: string
    emptyDir: string
    direct: boolean
    /** Source of the /run/secrets bind: the instance's directory, or the empty one for a bake. */
    secretsSource?: string
    /** The instance's own directory, when it is the source (filled before the restore). */
    secretsDir?: string
  },
): { spec: Record<string, unknown>; sandbox: Sandbox } {
  const spec = buildOciSpec({
    hostname: req.fn,
    rootfs: at.rootfs,
    args: req.process.args,
    env: req.process.env,
    cwd: req.process.cwd,
    uid: req.process.uid,
    gid: req.process.gid,
    netnsPath: host.ns.path,
    emptyDir: host.emptyDir,
    cgroupsPath: cgroupPath(req.id),
    cgroupMounts: containerCgroupMounts(host.cgroups, cgroupPath(req.id), host.cgroupSkeleton),
    memoryBytes: req.memoryBytes,
    pids: req.pids,
    // A restore gets its CPU limit afterwards (limitCpu): CRIU's work is not the function's.
    criuConfig: at.criuConfig,
    ...(req.forRestore ? {} : { cpus: req.cpus }),
    ...(req.seccomp ? { seccomp: req.seccomp } : {}),
    ...(host.secretsSource ? { secretsSource: host.secretsSource } : {}),
  })
  const sandbox: Sandbox = {
    id: req.id,
    fn: req.fn,
    ...at,
    logFile: join(at.dir, 'output.log'),
    pidFile: join(at.dir, 'pid'),
    netns: host.ns,
    lowers: req.lowers,
    cpus: req.cpus,
    ...(host.direct ? { direct: { externalMounts: criuExternalMounts(spec) } } : {}),
    ...(host.secretsDir ? { secretsDir: host.secretsDir } : {}),
  }
  return { spec, sandbox }
}

/**
 * Stop whatever runs in the sandbox and release all it holds, every step whatever the others do.
 * Order matters: the process must be gone before its rootfs is unmounted and its namespace freed.
 */
async function destroySandbox(
  deps: Pick<SandboxManagerDeps, 'runc' | 'mounter' | 'network' | 'ips' | 'secrets'> & {
    layout: () => Promise<CgroupLayout>
  },
  sb: Pick<Sandbox, 'id' | 'dir' | 'rootfs' | 'netns' | 'direct' | 'secretsDir'>,
  opts?: { keepUpperAt?: string },
): Promise<void> {
  const { runc, mounter, network } = deps
  const errors: unknown[] = []
  const attempt = async (step: () => Promise<unknown>) => {
    try {
      await step()
    } catch (err) {
      errors.push(err)
    }
  }
  // A sandbox CRIU restored into directly never held a runc container: its cgroup holds it.
  if (!sb.direct) await attempt(() => runc.delete(sb.id))
  await attempt(async () => destroyCgroup(await deps.layout(), cgroupPath(sb.id)))
  await attempt(() => mounter.unmount(sb.rootfs))
  // Before the layer's tmpfs is unmounted below: the upper dir may live there.
  const keep = opts?.keepUpperAt
  if (keep && !errors.length) await attempt(() => keepUpper(mounter, sb.dir, keep))
  // The writable layer's tmpfs, and what a restore that failed half-way can leave CRIU's own mounts (its cgroup yard) in the work dir.
  await attempt(async () => {
    for (const m of await mounter.list(sb.dir)) await mounter.unmount(m)
  })
  await attempt(() => network.destroy(sb.netns.name, sb.netns.veth))
  const { secrets } = deps
  if (sb.secretsDir && secrets) await attempt(() => secrets.remove(sb.id))
  await attempt(() => rm(sb.dir, { recursive: true, force: true }))
  deps.ips.release(sb.netns.ip)
  if (errors.length)
    throw new AggregateError(errors, `destroying sandbox ${sb.id} left ${errors.length} problem(s)`)
}

/** Create the sandbox manager of one state dir. */
export function createSandboxManager(deps: SandboxManagerDeps): SandboxManager {
  const { network, ips, mounter, helper } = deps
  const ensureBridge = once(() => network.ensureBridge())

  const emptyDir = join(deps.stateDir, 'empty')
  const cgroupSkeleton = join(deps.stateDir, 'cgroupfs')
  const sandboxDir = (id: string) => join(instancesDir(deps.stateDir), id)
  const cgroupLayout = once(deps.readLayout ?? readCgroupLayout)
  const restorePath = once(
    async () =>
      probeRestorePath({
        layout: await cgroupLayout(),
        helper,
        withoutHelper: deps.withoutHelper ?? 'no sandbox helper',
      }),
    (path) => path.settled,
  )
  const ensureDirs = once(async () => {
    await mkdir(emptyDir, { recursive: true, mode: 0o555 })
    const layout = await cgroupLayout()
    await ensureCgroupSkeleton(layout, cgroupSkeleton)
    await prepareCgroupParent(layout, SANDBOX_CGROUP_PARENT)
    return layout
  })
  const destroy: SandboxManager['destroy'] = (sb, opts) =>
    destroySandbox({ ...deps, layout: cgroupLayout }, sb, opts)

  return {
    restorePath,

    async prepare(req) {
      await ensureBridge()
      const cgroups = await ensureDirs()
      const direct = req.forRestore && (await restorePath()).direct
      const at = sandboxPaths(sandboxDir(req.id))
      // Without secret files (the CLI's bakes) a restore's /run/secrets is the empty directory too.
      const secretFiles = req.secrets && req.forRestore ? deps.secrets : undefined
      const ip = ips.allocate()
      const nsName = netnsName(req.id)
      let netns: NamespaceHandle | undefined
      try {
        await mkdir(at.dir, { recursive: true, mode: 0o700 })
        await mkdir(at.criuWorkDir, { recursive: true })
        // Namespace, rootfs and cgroup are independent: set them up side by side (without the
        // sandbox helper the first two run commands while the cgroup is written). All three settle
        // before a failure is handled: a release running beside a step still at work would miss
        // what that step makes after it.
        const [ns] = await allSettled<[NamespaceHandle, void, void]>([
          network.create(nsName, ip, req.egress),
          mounter.mountOverlay({
            lowers: req.lowers,
            ...overlayDirs(at.dir, req.diskBytes !== undefined),
            target: at.rootfs,
            ...(req.diskBytes !== undefined
              ? { layer: { dir: layerDir(at.dir), sizeBytes: req.diskBytes } }
              : {}),
          }),
          (async () => {
            // Created ahead: the container's /sys/fs/cgroup binds its directories.
            await createCgroup(cgroups, cgroupPath(req.id), helper)
            if (direct) {
              const limits = { memoryBytes: req.memoryBytes, pids: req.pids }
              await applySandboxLimits(cgroups, cgroupPath(req.id), limits, helper)
            }
            // The bind's source must exist before any restore maps it (working-set profiles too).
            await secretFiles?.prepare(req.id)
          })(),
        ])
        netns = ns
        const { spec, sandbox } = describeSandbox(req, at, {
          ns,
          cgroups,
          cgroupSkeleton,
          emptyDir,
          direct: !!direct,
          ...(req.secrets ? { secretsSource: secretFiles?.dirFor(req.id) ?? emptyDir } : {}),
          ...(secretFiles ? { secretsDir: secretFiles.dirFor(req.id) } : {}),
        })
        await Promise.all([
          writeFile(join(at.bundle, 'config.json'), JSON.stringify(spec)),
          // What a checkpoint of this sandbox needs; a restore rewrites it (restoreIntoSandbox).
          writeFile(at.criuConfig, criuDumpConfigText(), { mode: 0o600 }),
          writeFile(join(at.dir, 'sandbox.json'), JSON.stringify(sandbox)),
        ])
        return sandbox
      } catch (err) {
        await destroy({
          id: req.id,
          dir: at.dir,
          rootfs: at.rootfs,
          netns: netns ?? { name: nsName, path: '', ip, veth: vethName(nsName, req.egress) },
          ...(secretFiles ? { secretsDir: secretFiles.dirFor(req.id) } : {}),
        })
        throw err
      }
    },

    async workDir(id) {
      const dir = join(sandboxDir(id), 'criu')
      // Synchronously: this starts a cold start's critical path (the lazy-pages daemon waits for
      // it), and an async mkdir -p queues each level behind the snapshot check's stats in libuv's
      // thread pool (~1 ms here); the two mkdir calls take ~0.05 ms on the event loop.
      mkdirSync(dir, { recursive: true, mode: 0o700 })
      return dir
    },

    async fillSecrets(sb, values, owner) {
      if (!sb.secretsDir || !deps.secrets)
        throw new InitlessError('ERR_SANDBOX_SETUP_FAILED', `sandbox ${sb.id} was prepared without secrets`)
      await deps.secrets.fill(sb.id, values, owner)
    },

    async limitCpu(sb) {
      await setCpuLimit(await cgroupLayout(), cgroupPath(sb.id), sb.cpus, helper)
    },

    async setFrozen(sb, isFrozen) {
      const layout = await cgroupLayout()
      await (isFrozen ? freezeCgroup : thawCgroup)(layout, cgroupPath(sb.id))
    },

    async usage(sb) {
      return cgroupUsage(await cgroupLayout(), cgroupPath(sb.id))
    },

    async limitEvents(sb) {
      const [events, diskFull] = await Promise.all([
        readLimitEvents(await cgroupLayout(), cgroupPath(sb.id)),
        layerFull(sb.dir),
      ])
      return { ...events, diskFull }
    },

    destroy,
  }
}
