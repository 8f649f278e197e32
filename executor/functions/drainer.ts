/**
 * Draining one instance: mark it `draining` (gateways stop sending it requests), give every gateway
 * the drain grace to hear of it, then stop it once the requests the gateways still had on it are
 * done (their summed count in the instance registry), at the latest after the function's request
 * timeout. One drain per instance at a time.
 */
import type { Logger } from 'pino'
import type { InstanceRecord } from '../../shared/contracts.ts'
import { errorMessage } from '../../shared/errors.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import type { InstanceManager } from '../instances/instances.ts'

export interface DrainerDeps {
  readonly registry: Pick<InstanceRegistry, 'markDraining' | 'inflight'>
  readonly instances: Pick<InstanceManager, 'stop'>
  readonly logger: Logger
  /** How long gateways get to hear that an instance drains before its in-flight count is trusted (ms). */
  readonly drainGraceMs: number
  /** Poll interval of a drain's in-flight count (ms). */
  readonly pollMs: number
  readonly sleep: (ms: number) => Promise<void>
}

export interface Drainer {
  /** Drain `r`; a second call for the same instance joins the running drain. Never rejects. */
  drain(r: InstanceRecord, requestTimeoutMs: number): Promise<void>
  isDraining(id: string): boolean
  /** The drains under way. */
  running(): Promise<void>[]
  /** Stop waiting for in-flight requests: drains under way stop their instance now. */
  close(): Promise<void>
}

export function createDrainer(deps: DrainerDeps): Drainer {
  const draining = new Map<string, Promise<void>>()
  let isClosed = false

  async function drainOnce(r: InstanceRecord, requestTimeoutMs: number): Promise<void> {
    const started = Date.now()
    await deps.registry.markDraining(r.fn, r.id)
    deps.logger.info({ fn: r.fn, id: r.id, version: r.version ?? null }, 'instance draining')
    await deps.sleep(deps.drainGraceMs)
    const deadline = started + deps.drainGraceMs + requestTimeoutMs
    while (
      !isClosed &&
      Date.now() < deadline &&
      (await deps.registry.inflight(r.fn, r.id).catch(() => 0)) > 0
    )
      await deps.sleep(deps.pollMs)
    await deps.instances.stop(r.id, 'drained')
    deps.logger.info({ fn: r.fn, id: r.id, ms: Date.now() - started }, 'instance drained')
  }

  return {
    drain(r, requestTimeoutMs) {
      let p = draining.get(r.id)
      if (p) return p
      p = drainOnce(r, requestTimeoutMs)
        .catch((err: unknown) =>
          deps.logger.warn({ fn: r.fn, id: r.id, err: errorMessage(err) }, 'drain failed'),
        )
        .finally(() => draining.delete(r.id))
      draining.set(r.id, p)
      return p
    },
    isDraining: (id) => draining.has(id),
    running: () => [...draining.values()],
    async close() {
      isClosed = true
      await Promise.all([...draining.values()])
    },
  }
}
