/**
 * The host's cgroup hierarchies, as an instance sees them and as the executor manages them.
 * Works for cgroup v1 (one hierarchy per controller, each mounted under /sys/fs/cgroup) and v2 (one
 * unified hierarchy at /sys/fs/cgroup). initless creates a sandbox's cgroups ahead (the container
 * bind-mounts them). For a container runc starts (a bake), runc sets the limits; for a restore CRIU
 * does directly, the executor sets them as runc would (applySandboxLimits: cgroupLimitWrites, and on
 * v2 the device filter the sandbox helper attaches) before CRIU runs. docs/cgroup-v2.md: v2 details.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { access, mkdir, readFile, rmdir, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { HelperRequest, SandboxHelper } from './sandbox-helper.ts'

export const CGROUP_ROOT = '/sys/fs/cgroup'

/** Every sandbox's cgroup is a child of this one (relative to each hierarchy's root). */
export const SANDBOX_CGROUP_PARENT = '/initless'

export interface CgroupLayout {
  /** One unified hierarchy mounted at `root`. */
  readonly v2: boolean
  /** Where the hierarchies are mounted on the host: /sys/fs/cgroup (tests use a directory of their own). */
  readonly root: string
  /**
   * Hierarchy directory names under `root` (v1: `memory`, `cpu`, `cpu,cpuacct`, `systemd`,
   * `unified`...); empty for v2.
   */
  readonly hierarchies: readonly string[]
}

/** The cgroup file systems mounted directly under /sys/fs/cgroup, from a mountinfo text. */
export function parseCgroupLayout(mountinfo: string): CgroupLayout {
  const hierarchies: string[] = []
  let v2 = false
  for (const line of mountinfo.split('\n')) {
    const [pre, post] = line.split(' - ')
    if (!pre || !post) continue
    const mountPoint = pre.split(' ')[4]
    const fsType = post.split(' ')[0]
    if (fsType !== 'cgroup' && fsType !== 'cgroup2') continue
    if (mountPoint === CGROUP_ROOT && fsType === 'cgroup2') v2 = true
    else if (
      mountPoint?.startsWith(`${CGROUP_ROOT}/`) &&
      !mountPoint.slice(CGROUP_ROOT.length + 1).includes('/')
    )
      hierarchies.push(mountPoint.slice(CGROUP_ROOT.length + 1))
  }
  return v2 ? { v2, root: CGROUP_ROOT, hierarchies: [] } : { v2, root: CGROUP_ROOT, hierarchies }
}

export async function readCgroupLayout(): Promise<CgroupLayout> {
  return parseCgroupLayout(await readFile('/proc/self/mountinfo', 'utf8'))
}

/** The v1 hierarchy holding `controller` (it may share one, as in `cpu,cpuacct`). */
export function hierarchyWith(layout: CgroupLayout, controller: string): string | undefined {
  return layout.hierarchies.find((name) => name.split(',').includes(controller))
}

/** A cgroup's directory in every hierarchy. */
export function cgroupDirs(layout: CgroupLayout, relPath: string): string[] {
  if (layout.v2) return [join(layout.root, relPath)]
  return layout.hierarchies.map((h) => join(layout.root, h, relPath))
}

/** A cgroup's directory in the hierarchy holding `controller` (v1), or in the unified one (v2). */
function controllerDir(layout: CgroupLayout, controller: string, relPath: string): string {
  if (layout.v2) return join(layout.root, relPath)
  const h = hierarchyWith(layout, controller)
  if (!h) throw new Error(`no cgroup v1 hierarchy with the ${controller} controller under ${layout.root}`)
  return join(layout.root, h, relPath)
}

/**
 * Create a cgroup in every hierarchy (runc then uses it as it is). A sandbox's parent exists
 * (prepareCgroupParent): the helper's mkdir is not recursive.
 */
export async function createCgroup(
  layout: CgroupLayout,
  relPath: string,
  helper?: SandboxHelper,
): Promise<void> {
  const dirs = cgroupDirs(layout, relPath)
  if (helper) return helper.request({ op: 'mkdir', args: dirs })
  await Promise.all(dirs.map((d) => mkdir(d, { recursive: true })))
}

/**
 * Prepare the parent of every sandbox cgroup (`/initless`) once. v1's cpuset refuses a task in a
 * cgroup whose `cpuset.cpus`/`cpuset.mems` are empty, and a new cgroup starts empty: the parent
 * takes the root's and sets `cgroup.clone_children`, so each sandbox cgroup starts with them. On v2
 * a cgroup has a controller's files only if its parent enables it: see enableV2Controllers.
 */
export async function prepareCgroupParent(layout: CgroupLayout, parent: string): Promise<void> {
  await createCgroup(layout, parent)
  if (layout.v2) return enableV2Controllers(layout, parent)
  const h = hierarchyWith(layout, 'cpuset')
  if (!h) return
  const dir = join(layout.root, h, parent)
  for (const file of ['cpuset.cpus', 'cpuset.mems']) {
    if ((await readFile(join(dir, file), 'utf8')).trim()) continue
    await writeFile(join(dir, file), await readFile(join(layout.root, h, file), 'utf8'))
  }
  await writeFile(join(dir, 'cgroup.clone_children'), '1')
}

/** The v2 controllers a sandbox cgroup's limits use (memory.max, pids.max, cpu.max). */
export const V2_CONTROLLERS = ['cpu', 'memory', 'pids'] as const

/**
 * Enable V2_CONTROLLERS for the children of `parent` (relative to the v2 root): in the
 * `cgroup.subtree_control` of the root and of every cgroup down to `parent`, top-down (a cgroup can
 * enable only what its own parent enabled for it: its `cgroup.controllers`). Controllers already
 * enabled are left alone, so a second executor's run writes nothing. runc does the same for the
 * containers it starts; a restore CRIU does directly needs it done here.
 */
export async function enableV2Controllers(layout: CgroupLayout, parent: string): Promise<void> {
  const parts = parent.split('/').filter(Boolean)
  // The root and each ancestor down to `parent` itself (whose children are the sandboxes).
  for (let depth = 0; depth <= parts.length; depth++) {
    const dir = join(layout.root, ...parts.slice(0, depth))
    const words = async (file: string) =>
      (await readFile(join(dir, file), 'utf8')).split(/\s+/).filter(Boolean)
    const enabled = await words('cgroup.subtree_control')
    const missing = V2_CONTROLLERS.filter((c) => !enabled.includes(c))
    if (!missing.length) continue
    const available = await words('cgroup.controllers')
    const absent = missing.filter((c) => !available.includes(c))
    if (absent.length) {
      throw new Error(
        `cgroup v2 controller(s) ${absent.join(', ')} not available in ${dir} (cgroup.controllers: ${available.join(' ') || 'none'}); ` +
          'on a host that mounts them as cgroup v1 hierarchies, the cgroup v2 layout cannot limit sandboxes',
      )
    }
    const file = join(dir, 'cgroup.subtree_control')
    // One write: the kernel applies `+a +b` as a whole or not at all.
    await writeFile(file, missing.map((c) => `+${c}`).join(' ')).catch((err: NodeJS.ErrnoException) => {
      // EBUSY: a non-root cgroup with processes of its own cannot enable domain controllers.
      throw new Error(`enabling ${missing.join(', ')} in ${file}: ${err.message}`, { cause: err })
    })
  }
}

/**
 * What the device cgroup lets a container use: runc's default allow list (libcontainer/specconv
 * AllowedDevices) after denying everything. Creating nodes (`m`) is allowed; opening only the
 * nodes any container has (null, zero, full, random, urandom, tty, ptmx, its ptys, tun). v1 takes
 * them as devices.allow writes; on v2 the sandbox helper compiles the same strings into the eBPF
 * device filter (deviceFilterRequest).
 */
export const ALLOWED_DEVICES = [
  'c *:* m',
  'b *:* m',
  'c 1:3 rwm',
  'c 1:8 rwm',
  'c 1:7 rwm',
  'c 5:0 rwm',
  'c 1:5 rwm',
  'c 1:9 rwm',
  'c 136:* rwm',
  'c 5:2 rwm',
  'c 10:200 rwm',
] as const

export interface CgroupLimits {
  readonly memoryBytes: number
  readonly pids: number
}

export interface CgroupWrite {
  readonly file: string
  readonly value: string
  /** Skip the write when the file does not exist (swap accounting is a kernel option). */
  readonly optional?: boolean
}

/**
 * The writes that give a sandbox the limits runc would set from its config.json, in order. v1:
 * memory (and memory+swap at the same value: no swap), pids, and the device allow list (the
 * memory+swap limit may not go below the memory limit; the device list starts from "deny all").
 * v2: memory.max, memory.swap.max 0 (runc's value for swap equal to the memory limit; the file
 * exists only with swap accounting), pids.max; devices there are an eBPF program
 * (deviceFilterRequest), no file.
 */
export function cgroupLimitWrites(
  layout: CgroupLayout,
  relPath: string,
  limits: CgroupLimits,
): CgroupWrite[] {
  const dir = (controller: string) => controllerDir(layout, controller, relPath)
  const memory = dir('memory')
  if (layout.v2) {
    return [
      { file: join(memory, 'memory.max'), value: String(limits.memoryBytes) },
      { file: join(memory, 'memory.swap.max'), value: '0', optional: true },
      { file: join(dir('pids'), 'pids.max'), value: String(limits.pids) },
    ]
  }
  const devices = dir('devices')
  return [
    { file: join(memory, 'memory.limit_in_bytes'), value: String(limits.memoryBytes) },
    { file: join(memory, 'memory.memsw.limit_in_bytes'), value: String(limits.memoryBytes), optional: true },
    { file: join(dir('pids'), 'pids.max'), value: String(limits.pids) },
    { file: join(devices, 'devices.deny'), value: 'a' },
    ...ALLOWED_DEVICES.map((rule) => ({ file: join(devices, 'devices.allow'), value: rule })),
  ]
}

/**
 * The sandbox helper request that attaches the cgroup v2 device filter for `rules` (default: runc's,
 * ALLOWED_DEVICES, the list v1 cgroups get as devices.allow writes) to the sandbox's cgroup.
 */
export function deviceFilterRequest(
  layout: CgroupLayout,
  relPath: string,
  rules: readonly string[] = ALLOWED_DEVICES,
): HelperRequest {
  if (!layout.v2) throw new Error('the eBPF device filter is for cgroup v2; v1 takes devices.allow writes')
  return { op: 'device-filter', args: [join(layout.root, relPath), ...rules] }
}

/** Write limits, in order; with the helper in one request (node: ~0.5 ms per write here). */
export async function applyCgroupWrites(
  writes: readonly CgroupWrite[],
  helper?: SandboxHelper,
): Promise<void> {
  if (helper) {
    return helper.request({
      op: 'write',
      args: writes.flatMap((w) => [w.file, w.value, w.optional ? '1' : '0']),
    })
  }
  for (const w of writes) {
    if (
      w.optional &&
      !(await access(w.file).then(
        () => true,
        () => false,
      ))
    )
      continue
    await writeFile(w.file, w.value)
  }
}

/**
 * Give a sandbox cgroup what runc would set in it (for a restore CRIU does directly): the limit
 * writes, and on v2 the device filter, which only the sandbox helper can attach (bpf(2)).
 */
export async function applySandboxLimits(
  layout: CgroupLayout,
  relPath: string,
  limits: CgroupLimits,
  helper?: SandboxHelper,
): Promise<void> {
  if (layout.v2 && !helper)
    throw new Error(
      'cgroup v2 device rules are an eBPF program only the sandbox helper attaches: none running',
    )
  await applyCgroupWrites(cgroupLimitWrites(layout, relPath, limits), helper)
  if (layout.v2 && helper) await helper.request(deviceFilterRequest(layout, relPath))
}

/**
 * Mounts that show a container its own cgroup at /sys/fs/cgroup, as runc's `cgroup` mount does, but
 * made of bind mounts only: v2 binds the cgroup's directory; v1 binds `skeleton` (an empty
 * read-only directory with a mount point per hierarchy) and then each hierarchy's directory of the
 * cgroup on its mount point.
 */
export function containerCgroupMounts(
  layout: CgroupLayout,
  relPath: string,
  skeleton: string,
): { destination: string; source: string }[] {
  if (layout.v2) return [{ destination: CGROUP_ROOT, source: join(layout.root, relPath) }]
  return [
    { destination: CGROUP_ROOT, source: skeleton },
    ...layout.hierarchies.map((h) => ({
      destination: join(CGROUP_ROOT, h),
      source: join(layout.root, h, relPath),
    })),
  ]
}

/** Create the v1 skeleton: a directory per hierarchy, and `cpu` -> `cpu,cpuacct` style links. */
export async function ensureCgroupSkeleton(layout: CgroupLayout, skeleton: string): Promise<void> {
  await mkdir(skeleton, { recursive: true, mode: 0o555 })
  for (const h of layout.hierarchies) {
    await mkdir(join(skeleton, h), { recursive: true, mode: 0o555 })
    const parts = h.split(',')
    if (parts.length < 2) continue
    for (const part of parts) {
      if (layout.hierarchies.includes(part)) continue
      await symlink(h, join(skeleton, part)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err
      })
    }
  }
}

const CPU_PERIOD_US = 100_000

/**
 * Set the cgroup's CPU bandwidth limit (`cpus` CPUs' worth per period). A restore runs without one:
 * CRIU's restore work (reading pages, rebuilding the address space) happens inside the container's
 * cgroup, and half a CPU's quota stalled it for whole 100 ms periods.
 */
export async function setCpuLimit(
  layout: CgroupLayout,
  relPath: string,
  cpus: number,
  helper?: SandboxHelper,
): Promise<void> {
  const quota = Math.round(cpus * CPU_PERIOD_US)
  const dir = controllerDir(layout, 'cpu', relPath)
  // After a restore's CRIU run and before its instance counts as ready: one helper request, not
  // a file write per value from node (open, write, close through the thread pool each).
  const writes: CgroupWrite[] = layout.v2
    ? [{ file: join(dir, 'cpu.max'), value: `${quota} ${CPU_PERIOD_US}` }]
    : [
        { file: join(dir, 'cpu.cfs_period_us'), value: String(CPU_PERIOD_US) },
        { file: join(dir, 'cpu.cfs_quota_us'), value: String(quota) },
      ]
  await applyCgroupWrites(writes, helper)
}

/**
 * SIGKILL every process in the cgroup, then remove it in every hierarchy. Missing is fine. Returns
 * how many processes it found.
 */
export async function destroyCgroup(layout: CgroupLayout, relPath: string): Promise<number> {
  const dirs = cgroupDirs(layout, relPath)
  const found = new Set<string>()
  for (const dir of dirs) {
    const procs = await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => '')
    for (const pid of procs.split('\n').filter(Boolean)) {
      found.add(pid)
      try {
        process.kill(Number(pid), 'SIGKILL')
      } catch {
        // already gone
      }
    }
  }
  // A frozen cgroup's tasks (a standby instance) act on the SIGKILL only once thawed: thawed after
  // the kill, so none of them runs another instruction of its own. Missing file: no freezer.
  const freezer = hierarchyWith(layout, 'freezer')
  const thaw = layout.v2
    ? { file: join(layout.root, relPath, 'cgroup.freeze'), value: '0' }
    : freezer && { file: join(layout.root, freezer, relPath, 'freezer.state'), value: 'THAWED' }
  if (thaw) await writeFile(thaw.file, thaw.value, { flag: 'r+' }).catch(() => undefined)
  for (const dir of dirs) {
    for (let attempt = 0; attempt < 20; attempt++) {
      const err = await rmdir(dir).then(
        () => undefined,
        (e: NodeJS.ErrnoException) => e,
      )
      if (!err || err.code === 'ENOENT') break
      // EBUSY until the killed processes are reaped.
      await new Promise((r) => setTimeout(r, 25))
    }
  }
  return found.size
}

/**
 * The mountinfo line of a process's root mount, as its own mount namespace has it (an instance's
 * overlay names its dirs there; /proc/<pid>/root reads as `/` from outside such a namespace).
 */
export function rootMount(pid: number): string {
  const lines = readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n')
  return lines.find((l) => l.split(' ')[4] === '/') ?? ''
}

/**
 * The sandbox cgroups (children of `parent`) and the pids in each, from the pids hierarchy (v1) or
 * the unified one (v2); a cgroup gone meanwhile is left out. For tests, benchmarks and diagnostics
 * (synchronous, reads /sys), not the request path.
 */
export function sandboxCgroupProcs(parent = SANDBOX_CGROUP_PARENT): { name: string; pids: number[] }[] {
  const dir = [join(CGROUP_ROOT, 'pids', parent), join(CGROUP_ROOT, parent)].find((d) => existsSync(d))
  if (!dir) return []
  const out: { name: string; pids: number[] }[] = []
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (!e.isDirectory()) continue
    try {
      const pids = readFileSync(join(dir, e.name, 'cgroup.procs'), 'utf8')
        .split('\n')
        .filter(Boolean)
      out.push({ name: e.name, pids: pids.map(Number) })
    } catch {
      // gone meanwhile
    }
  }
  return out
}

/**
 * Ids of the sandbox cgroups (children of `parent`) holding a process whose root is an overlay
 * under `stateDir`: the instances of that state dir still running. For tests, benchmarks and
 * diagnostics (synchronous, reads /proc), not the request path.
 */
export function instanceCgroupsIn(stateDir: string, parent = SANDBOX_CGROUP_PARENT): string[] {
  return sandboxCgroupProcs(parent)
    .filter(({ pids }) => {
      try {
        return pids.some((pid) => rootMount(pid).includes(`=${stateDir}/`))
      } catch {
        return false // gone meanwhile
      }
    })
    .map(({ name }) => name)
}

/** Counters of limits a cgroup hit, as the kernel keeps them. */
export interface CgroupLimitEvents {
  /** Processes the memory cgroup's OOM killer killed. */
  readonly oomKills: number
  /** Forks and clones refused at the pids limit. */
  readonly pidsMax: number
}

/** One counter of a `key value` per line file (memory.events, memory.oom_control, pids.events). */
export function keyedCounter(text: string, key: string): number {
  for (const line of text.split('\n')) {
    const [k, v] = line.trim().split(/\s+/)
    if (k === key) return Number(v) || 0
  }
  return 0
}

/**
 * What limits the cgroup hit: v1 keeps the OOM kills in memory.oom_control (`oom_kill`, kernels
 * >= 4.13), v2 in memory.events; both count refused forks in pids.events (`max`). A file missing
 * (controller absent, cgroup gone) counts 0.
 */
export async function readLimitEvents(layout: CgroupLayout, relPath: string): Promise<CgroupLimitEvents> {
  const read = async (controller: string, file: string) => {
    try {
      return await readFile(join(controllerDir(layout, controller, relPath), file), 'utf8')
    } catch {
      return ''
    }
  }
  const [memory, pids] = await Promise.all([
    read('memory', layout.v2 ? 'memory.events' : 'memory.oom_control'),
    read('pids', 'pids.events'),
  ])
  return { oomKills: keyedCounter(memory, 'oom_kill'), pidsMax: keyedCounter(pids, 'max') }
}
