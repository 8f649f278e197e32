/**
 * The reaper: every tick it removes dead instances (exited, OOM-killed) and recycles those that hit
 * their pids or disk limit (death-reason.ts; noticed within one tick, the reason recorded),
 * stops instances idle past their function's idle timeout (scale to zero, down to minInstances)
 * or no longer in the registry, drops the records of hosts gone silent, and starts instances of
 * functions below their minInstances. (What a previous run left is reconcile.ts's.)
 */
import type { Logger } from 'pino'
import { HOST_GONE_MS } from '../../shared/contracts.ts'
import { errorMessage } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import type { InstanceDeaths } from '../../shared/instance-deaths.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import { newInstanceId } from '../../shared/restore-client.ts'
import type { StartedInstance } from '../runtimes/runtimes.ts'
import type { InstanceManager } from './instances.ts'

/** A `starting` record older than this (or the function's start timeout) is given up on. */
export const STUCK_STARTING_MS = 10 * 60_000

export interface ReaperDeps {
  readonly instances: Pick<InstanceManager, 'start' | 'stop' | 'live' | 'ended'>
  /** Where the reasons of ended instances are recorded for the gateways (ERR_INSTANCE_DIED, /metrics). */
  readonly deaths?: Pick<InstanceDeaths, 'record'>
  readonly registry: Pick<
    InstanceRegistry,
    'executors' | 'listAll' | 'list' | 'remove' | 'reserve' | 'withdraw' | 'lastUse'
  >
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

type Stopped = { id: string; reason: StopReason }[]

/**
 * Drop the registry records of instances on hosts silent for HOST_GONE_MS (a machine that died;
 * its executor's reconcile does it if it comes back): gateways would go on sending them requests
 * that cannot connect. `starting` reservations are left to the stuck-reservation rule.
 */
async function dropGoneHosts(deps: ReaperDeps, log: Logger, now: number): Promise<void> {
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
 * Withdraw reservations whose restore never reported (its executor died past BullMQ's stalled-job
 * retries): they would count against maxInstances forever.
 */
async function withdrawStuck(deps: ReaperDeps, log: Logger): Promise<void> {
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
}

/** Stop this host's instances of one function that left the registry or are idle past the minimum. */
async function reapFunction(deps: ReaperDeps, fnName: string, all: StartedInstance[], stopped: Stopped) {
  const fn = deps.functions().find((f) => f.name === fnName)
  const idleMs = fn?.manifest.scaling.idleTimeout ?? 0
  const keep = fn?.manifest.scaling.minInstances ?? 0
  const lastUse = await deps.registry.lastUse(fnName).catch(() => undefined)
  const listed = await deps.registry.list(fnName).catch(() => undefined)
  if (!lastUse || !listed) return // Redis unreachable: never reap on missing data.
  const records = new Map(listed.map((r) => [r.id, r]))
  // Removed from the registry behind this executor's back (by the executors of other hosts while
  // this one was out of Redis' reach, by a Redis that lost its data): no gateway will send it a
  // request again, and without a record it would never count as idle.
  const list = []
  for (const inst of all) {
    if (records.has(inst.id)) list.push(inst)
    else {
      await deps.instances.stop(inst.id, 'no longer in the registry')
      stopped.push({ id: inst.id, reason: 'unregistered' })
    }
  }
  // minInstances counts every host's ready instances. All executors rank them the same way, least
  // recently used first (the busiest survive), and each stops its own among those past the
  // minimum: two hosts with an idle instance each and a minimum of one stop one, not both, and do
  // not keep both.
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

export function createReaper(deps: ReaperDeps): Reaper {
  const log = deps.logger.child({ module: 'reaper' })
  /** minInstances restores running, by function: one at a time per function. */
  const topping = new Map<string, Promise<void>>()
  let goneHostsAt = -Infinity

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

  /** Other hosts are judged only after this one has been heard for HOST_GONE_MS, every 10 s. */
  const judgeHosts = async () => {
    const now = deps.now()
    const since = deps.beatingSince?.()
    if (since === undefined || now - since < HOST_GONE_MS || now - goneHostsAt < GONE_HOSTS_EVERY_MS) return
    goneHostsAt = now
    await dropGoneHosts(deps, log, now)
  }

  return {
    async settled() {
      while (topping.size) await Promise.all(topping.values())
    },

    async tick() {
      const stopped: Stopped = []
      for (const { instance: inst, ending } of await deps.instances.ended()) {
        const { reason, detail } = ending
        log.warn({ fn: inst.fn, id: inst.id, reason, detail }, 'instance died')
        // Recorded before the registry record goes: a gateway that sees it gone finds the reason.
        await deps.deaths
          ?.record({ id: inst.id, fn: inst.fn, reason, detail, at: deps.now() })
          .catch((err: unknown) => log.warn({ id: inst.id, err: errorMessage(err) }, 'death not recorded'))
        await deps.instances.stop(inst.id, reason)
        stopped.push({ id: inst.id, reason: 'dead' })
      }
      await withdrawStuck(deps, log)
      await judgeHosts().catch((err: unknown) =>
        log.warn({ err: errorMessage(err) }, 'could not look for silent hosts'),
      )
      // Taken before the registry is read: an instance is live only once its record exists.
      const byFn = new Map<string, StartedInstance[]>()
      for (const inst of deps.instances.live()) byFn.set(inst.fn, [...(byFn.get(inst.fn) ?? []), inst])
      for (const [fnName, all] of byFn) await reapFunction(deps, fnName, all, stopped)
      for (const fn of deps.functions()) await topUp(fn)
      return stopped
    },
  }
}
