/**
 * The standby keeper (scaling.standby): per function, N instances restored ahead of demand and held
 * frozen in the cgroup freezer, all hosts together. A gateway claims one in the registry (frozen ->
 * ready); the `ready` event is this keeper's signal to thaw it, and a replacement is restored at
 * once. Each tick it stops this host's frozen instances that are no longer wanted (an old version,
 * past the count, a deleted function) and starts one missing standby per function.
 *
 * A frozen instance is never idle-reaped: it is the standby the manifest asks for, and it costs
 * memory only. Once thawed it is a ready instance like any other, idle from its thaw on.
 */
import type { Logger } from 'pino'
import type { InstanceRecord, RegistryEvent } from '../../shared/contracts.ts'
import { errorMessage } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import { newInstanceId } from '../../shared/restore-client.ts'
import type { InstanceManager } from './instances.ts'
import { STUCK_STARTING_MS } from './reaper.ts'

export interface StandbyDeps {
  readonly instances: Pick<InstanceManager, 'start' | 'stop' | 'live' | 'frozen' | 'thaw'>
  readonly registry: Pick<InstanceRegistry, 'list' | 'reserveStandby' | 'remove'>
  readonly functions: () => readonly FunctionDef[]
  readonly hostId: string
  readonly now: () => number
  readonly logger: Logger
}

export interface StandbyKeeper {
  /** The registry listener's onEvent: thaws a claimed instance of this host and replaces it. */
  onEvent(event: RegistryEvent): void
  /** One pass: stop unwanted frozen instances of this host, start missing ones (in the background). */
  tick(): Promise<void>
  /** Resolves when no standby restore of this keeper is running (shutdown, tests). */
  settled(): Promise<void>
}

/** Frozen records beyond the first `standby` (oldest first, the same order on every host). */
function surplus(records: readonly InstanceRecord[], standby: number): InstanceRecord[] {
  return [...records]
    .sort((a, b) => (a.frozenAt ?? a.createdAt) - (b.frozenAt ?? b.createdAt) || a.id.localeCompare(b.id))
    .slice(standby)
}

/** Why this host's frozen instance `r` is not wanted any more, if it is not. */
function unwanted(
  fn: FunctionDef | undefined,
  r: InstanceRecord,
  extra: ReadonlySet<string>,
): string | undefined {
  if (!fn) return 'function gone'
  if (fn.version !== undefined && r.version !== fn.version) return 'old version'
  if (extra.has(r.id)) return 'beyond scaling.standby'
  return undefined
}

export function createStandbyKeeper(deps: StandbyDeps): StandbyKeeper {
  const log = deps.logger.child({ module: 'standby' })
  /** Standby restores running, by function: one at a time per function. */
  const starting = new Map<string, Promise<void>>()

  const topUp = async (fn: FunctionDef) => {
    const standby = fn.manifest.scaling.standby
    if (standby === 0 || starting.has(fn.name)) return
    const id = newInstanceId(fn.name)
    const limits = {
      standby,
      maxInstances: fn.manifest.scaling.maxInstances,
      ...(fn.version === undefined ? {} : { version: fn.version }),
    }
    if (!(await deps.registry.reserveStandby(fn.name, limits, id, deps.hostId).catch(() => false))) return
    const job = { fn: fn.name, instanceId: id, traceId: `standby-${id}`, enqueuedAt: deps.now() }
    const run = deps.instances
      .start({ ...job, reason: 'standby' })
      .then(
        (r) => log.info({ fn: fn.name, id, runtime: r.runtime, standby }, 'standby started'),
        async (err: unknown) => {
          log.warn({ fn: fn.name, id, err: errorMessage(err) }, 'standby failed to start')
          await deps.registry.remove(fn.name, id).catch(() => undefined)
        },
      )
      .finally(() => starting.delete(fn.name))
    starting.set(fn.name, run)
  }

  /** Stop this host's unwanted frozen instances of `fn`, and reservations whose restore never reported. */
  const prune = async (fnName: string, fn: FunctionDef | undefined, mine: ReadonlySet<string>) => {
    const records = await deps.registry.list(fnName)
    const frozen = records.filter((r) => r.state === 'frozen')
    const extra = new Set(
      surplus(
        frozen.filter((r) => r.address),
        fn?.manifest.scaling.standby ?? 0,
      ).map((r) => r.id),
    )
    for (const r of frozen) {
      if (!r.address) {
        if (deps.now() - r.createdAt > STUCK_STARTING_MS && (await deps.registry.remove(fnName, r.id)))
          log.warn({ fn: fnName, id: r.id }, 'stuck standby reservation removed')
        continue
      }
      const why = mine.has(r.id) ? unwanted(fn, r, extra) : undefined
      if (why) await deps.instances.stop(r.id, `standby: ${why}`)
    }
  }

  return {
    onEvent(event) {
      if (event.type !== 'instance' || event.state !== 'ready') return
      if (!deps.instances.frozen().includes(event.id)) return
      const at = deps.now()
      void deps.instances
        .thaw(event.id)
        .then(() => {
          log.info({ fn: event.fn, id: event.id, ms: deps.now() - at }, 'standby thawed')
          const fn = deps.functions().find((f) => f.name === event.fn)
          return fn && topUp(fn)
        })
        .catch((err: unknown) =>
          log.error({ fn: event.fn, id: event.id, err: errorMessage(err) }, 'thaw failed'),
        )
    },

    async tick() {
      const fns = new Map(deps.functions().map((f) => [f.name, f]))
      const mine = new Set(deps.instances.frozen())
      const names = new Set(
        [...fns.values()].filter((f) => f.manifest.scaling.standby > 0).map((f) => f.name),
      )
      for (const inst of deps.instances.live()) if (mine.has(inst.id)) names.add(inst.fn)
      for (const name of names) {
        await prune(name, fns.get(name), mine).catch((err: unknown) =>
          log.warn({ fn: name, err: errorMessage(err) }, 'standby check failed'),
        )
      }
      for (const fn of fns.values()) await topUp(fn)
    },

    async settled() {
      while (starting.size) await Promise.all(starting.values())
    },
  }
}
