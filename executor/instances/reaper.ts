/**
 * The reaper: every tick it removes dead instances (exited, OOM-killed: noticed within one tick),
 * stops instances idle past their function's idle timeout (scale to zero, down to minInstances)
 * or no longer in the registry, drops the records of hosts gone silent, and starts instances of
 * functions below their minInstances. At start, `reconcile` cleans up
 * whatever a previous run of this host left behind.
 */
import { readdir, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { HOST_GONE_MS } from '../../shared/contracts.ts'
import { errorMessage } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import { newInstanceId } from '../../shared/restore-client.ts'
import { destroyCgroup, readCgroupLayout } from '../adapters/cgroups.ts'
import { EXPORT_LABEL, type DockerEngine } from '../adapters/docker.ts'
import type { InstanceManager } from './instances.ts'
import type { IpAllocator, NetworkManager } from '../adapters/network.ts'
import { isCriuWorkUnder, processArgv } from '../adapters/process.ts'
import type { Mounter } from '../adapters/rootfs.ts'
import type { Runc } from '../adapters/runc.ts'
import { cgroupPath, instancesDir, NETNS_PREFIX } from '../sandbox/sandbox.ts'

/** A `starting` record older than this (or the function's start timeout) is given up on. */
export const STUCK_STARTING_MS = 10 * 60_000

export interface ReaperDeps {
  readonly instances: InstanceManager
  readonly registry: InstanceRegistry
  readonly functions: () => readonly FunctionDef[]
  readonly now: () => number
  readonly logger: Logger
  /** This executor's host id: minInstances restores are reserved under it. */
  readonly hostId: string
  /**
   * Since when this executor's heartbeats have been recorded without a break (undefined: the last
   * one was not). Other hosts are judged gone only once this one has been heard for HOST_GONE_MS
   * itself: right after a Redis outage every heartbeat looks old. Without it, none is judged.
   */
  readonly beatingSince?: () => number | undefined
}

/** How often the registry is searched for instances of hosts gone silent (ms). */
const GONE_HOSTS_EVERY_MS = 10_000

export type StopReason = 'dead' | 'idle' | 'unregistered'

export interface Reaper {
  /** One pass; returns the ids stopped, with why. Starts minInstances restores in the background. */
  tick(): Promise<{ id: string; reason: StopReason }[]>
  /** Resolves when no minInstances restore of this reaper is running (shutdown, tests). */
  settled(): Promise<void>
}

export function createReaper(deps: ReaperDeps): Reaper {
  const log = deps.logger.child({ module: 'reaper' })
  /** minInstances restores running, by function: one at a time per function. */
  const topping = new Map<string, Promise<void>>()
  let goneHostsAt = -Infinity

  /**
   * Drop the registry records of instances on hosts silent for HOST_GONE_MS (a machine that
   * died; its executor's reconcile does it if it comes back): gateways would go on sending them
   * requests that cannot connect. `starting` reservations are left to the stuck-reservation rule.
   */
  const dropGoneHosts = async () => {
    const now = deps.now()
    const since = deps.beatingSince?.()
    if (since === undefined || now - since < HOST_GONE_MS || now - goneHostsAt < GONE_HOSTS_EVERY_MS) return
    goneHostsAt = now
    const beats = await deps.registry.executors()
    const gone = new Map(
      beats.filter((h) => h.hostId !== deps.hostId && now - h.at > HOST_GONE_MS).map((h) => [h.hostId, h.at]),
    )
    if (!gone.size) return
    for (const rec of await deps.registry.listAll()) {
      const at = gone.get(rec.hostId)
      if (at === undefined || rec.state === 'starting') continue
      if (await deps.registry.remove(rec.fn, rec.id))
        log.warn(
          { fn: rec.fn, id: rec.id, host: rec.hostId, silentMs: now - at },
          'instance of a silent host removed from the registry',
        )
    }
  }

  /**
   * Start one instance of a function below its minInstances, counted over all hosts. reserve()
   * takes the minimum as its cap and counts every record atomically, so executors that see the
   * same shortfall never start more than it. The restore runs here, not through the queue: the
   * reservation is this host's, and one per function per tick keeps it off the restore slots'
   * critical path.
   */
  const topUp = async (fn: FunctionDef) => {
    const min = fn.manifest.scaling.minInstances
    if (min === 0 || topping.has(fn.name)) return
    const id = newInstanceId(fn.name)
    if (!(await deps.registry.reserve(fn.name, min, id, deps.hostId).catch(() => false))) return
    const job = {
      fn: fn.name,
      instanceId: id,
      traceId: `min-${id}`,
      enqueuedAt: deps.now(),
      reason: 'min-instances' as const,
    }
    const run = deps.instances
      .start(job)
      .then(
        (r) => log.info({ fn: fn.name, id, runtime: r.runtime, minInstances: min }, 'min instance started'),
        async (err: unknown) => {
          log.warn({ fn: fn.name, id, err: errorMessage(err) }, 'min instance failed to start')
          await deps.registry.withdraw(fn.name, id).catch(() => undefined)
        },
      )
      .finally(() => topping.delete(fn.name))
    topping.set(fn.name, run)
  }

  return {
    async settled() {
      while (topping.size) await Promise.all(topping.values())
    },

    async tick() {
      const stopped: { id: string; reason: StopReason }[] = []
      for (const inst of await deps.instances.dead()) {
        log.warn({ fn: inst.fn, id: inst.id }, 'instance died')
        await deps.instances.stop(inst.id, 'dead')
        stopped.push({ id: inst.id, reason: 'dead' })
      }
      // A reservation whose restore never reported (its executor died past BullMQ's stalled-job
      // retries) would count against maxInstances forever.
      for (const fn of deps.functions()) {
        const limit = Math.max(fn.manifest.timeouts.start, STUCK_STARTING_MS)
        for (const rec of await deps.registry.list(fn.name).catch(() => [])) {
          if (
            rec.state === 'starting' &&
            deps.now() - rec.createdAt > limit &&
            (await deps.registry.withdraw(fn.name, rec.id))
          ) {
            log.warn({ fn: fn.name, id: rec.id }, 'stuck reservation withdrawn')
          }
        }
      }
      await dropGoneHosts().catch((err: unknown) =>
        log.warn({ err: errorMessage(err) }, 'could not look for silent hosts'),
      )
      // Taken before the registry is read: an instance is live only once its record exists.
      const byFn = new Map<string, typeof live>()
      const live = deps.instances.live()
      for (const inst of live) byFn.set(inst.fn, [...(byFn.get(inst.fn) ?? []), inst])
      for (const [fnName, all] of byFn) {
        const fn = deps.functions().find((f) => f.name === fnName)
        const idleMs = fn?.manifest.scaling.idleTimeout ?? 0
        const keep = fn?.manifest.scaling.minInstances ?? 0
        const lastUse = await deps.registry.lastUse(fnName).catch(() => undefined)
        const listed = await deps.registry.list(fnName).catch(() => undefined)
        if (!lastUse || !listed) continue // Redis unreachable: never reap on missing data.
        const records = new Map(listed.map((r) => [r.id, r]))
        // Removed from the registry behind this executor's back (by the executors of other hosts
        // while this one was out of Redis' reach, by a Redis that lost its data): no gateway
        // will send it a request again, and without a record it would never count as idle.
        const list = []
        for (const inst of all) {
          if (records.has(inst.id)) list.push(inst)
          else {
            await deps.instances.stop(inst.id, 'no longer in the registry')
            stopped.push({ id: inst.id, reason: 'unregistered' })
          }
        }
        // minInstances counts every host's ready instances. All executors rank them the same way,
        // least recently used first (the busiest survive), and each stops its own among those
        // past the minimum: two hosts with an idle instance each and a minimum of one stop one,
        // not both, and do not keep both.
        const now = deps.now()
        const ready = listed.filter((r) => r.state === 'ready')
        const idle = ready
          .map((r) => ({ id: r.id, last: lastUse.get(r.id) ?? r.readyAt ?? now }))
          .filter((x) => now - x.last >= idleMs)
          .sort((a, b) => a.last - b.last || a.id.localeCompare(b.id))
        const removable = new Set(idle.slice(0, Math.max(0, ready.length - keep)).map((x) => x.id))
        for (const inst of list) {
          if (!removable.has(inst.id)) continue
          await deps.instances.stop(inst.id, 'idle')
          stopped.push({ id: inst.id, reason: 'idle' })
        }
      }
      for (const fn of deps.functions()) await topUp(fn)
      return stopped
    },
  }
}

export interface ReconcileDeps {
  readonly hostId: string
  readonly stateDir: string
  readonly runc: Runc
  readonly mounter: Mounter
  readonly network: NetworkManager
  readonly ips: IpAllocator
  readonly docker: DockerEngine
  readonly registry: InstanceRegistry
  readonly logger: Logger
}

export interface ReconcileReport {
  containers: number
  mounts: number
  namespaces: number
  daemons: number
  dockerContainers: number
  registryEntries: number
}

/**
 * Clean everything a previous run of this host left: CRIU processes still at work for it (restores,
 * lazy-pages daemons), the processes in its sandboxes' cgroups (restored instances), runc
 * containers under our root, overlay mounts and sandbox dirs, network namespaces, Docker containers
 * of the boot runtime, and `ready`/`draining` registry entries of this host (their processes are
 * gone now).
 * `starting` entries stay: their jobs come back through BullMQ's stalled-job recovery.
 */
export async function reconcile(deps: ReconcileDeps): Promise<ReconcileReport> {
  const log = deps.logger.child({ module: 'reconcile' })
  const report: ReconcileReport = {
    containers: 0,
    mounts: 0,
    namespaces: 0,
    daemons: 0,
    dockerContainers: 0,
    registryEntries: 0,
  }
  const dir = instancesDir(deps.stateDir)
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const argv = await processArgv(Number(pid))
    if (argv && isCriuWorkUnder(argv, dir)) {
      try {
        process.kill(Number(pid), 'SIGKILL')
        report.daemons++
      } catch {
        // already gone
      }
    }
  }
  // Only what belongs to this state dir: several executors (and tests) may share one host.
  const ours = new Set(await readdir(dir).catch(() => [] as string[]))
  // Instances CRIU restored directly are no runc containers: their cgroup holds them.
  const cgroups = await readCgroupLayout()
  for (const id of ours) if (await destroyCgroup(cgroups, cgroupPath(id))) report.containers++
  for (const c of await deps.runc.list()) {
    if (!c.bundle.startsWith(`${dir}/`) && !ours.has(c.id)) continue
    await deps.runc.delete(c.id)
    report.containers++
  }
  for (const m of await deps.mounter.list(dir)) {
    await deps.mounter.unmount(m)
    report.mounts++
  }
  for (const ns of await deps.network.list(NETNS_PREFIX)) {
    if (!ours.has(ns.slice(NETNS_PREFIX.length))) continue
    await deps.network.destroy(ns)
    report.namespaces++
  }
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const sandbox = await readFile(join(dir, name, 'sandbox.json'), 'utf8').then(
      (t) => JSON.parse(t) as { netns?: { ip?: string } },
      () => undefined,
    )
    if (sandbox?.netns?.ip) deps.ips.release(sandbox.netns.ip)
    await rm(join(dir, name), { recursive: true, force: true })
  }
  // Bakes cut short by the crash left half-written snapshots: they can never complete now.
  const snapshots = join(deps.stateDir, 'snapshots')
  for (const fn of await readdir(snapshots).catch(() => [] as string[])) {
    for (const name of await readdir(join(snapshots, fn)).catch(() => [] as string[])) {
      if (name.startsWith('.tmp-')) await rm(join(snapshots, fn, name), { recursive: true, force: true })
    }
  }
  // Its instances' containers, and the containers of rootfs exports a crash cut short.
  report.dockerContainers += await removeHostContainers(deps.docker, deps.hostId, ['instances', 'exports'])
  for (const rec of await deps.registry.listAll()) {
    if (rec.hostId === deps.hostId && rec.state !== 'starting') {
      await deps.registry.remove(rec.fn, rec.id)
      report.registryEntries++
    }
  }
  log.info(report, 'reconciled')
  return report
}

/**
 * Remove this host's Docker containers of the given kinds: the boot runtime's instances
 * (`initless.host=<host id>`), rootfs exports (`initless.export=<host id>`). Returns how many.
 */
export async function removeHostContainers(
  docker: Pick<DockerEngine, 'listContainers' | 'removeContainer'>,
  hostId: string,
  kinds: readonly ('instances' | 'exports')[],
): Promise<number> {
  let removed = 0
  for (const kind of kinds) {
    const label = kind === 'instances' ? `initless.host=${hostId}` : `${EXPORT_LABEL}=${hostId}`
    for (const c of await docker.listContainers(label)) {
      await docker.removeContainer(c.id)
      removed++
    }
  }
  return removed
}

/** Is a snapshot dir still used by a mount (overlay lowerdir) or a lazy-pages daemon? */
export async function snapshotUsage(): Promise<(dir: string) => boolean> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8')
  const args: string[] = []
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const argv = await processArgv(Number(pid))
    if (argv?.includes('lazy-pages')) args.push(argv.join(' '))
  }
  return (dir) => mounts.includes(dir) || args.some((a) => a.includes(dir))
}
