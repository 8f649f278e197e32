/** `/healthz` (the process answers), `/readyz` (Redis and a live executor) and `/metrics`. */
import { Hono } from 'hono'
import { EXECUTOR_FRESH_MS } from '../../shared/contracts.ts'
import { errorMessage } from '../../shared/errors.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import type { GatewayMetrics } from '../metrics.ts'
import { noCapacity } from '../pool-state.ts'
import type { GatewayEnv } from '../request-context.ts'

export function createHealthRoutes(deps: {
  readonly registry: Pick<InstanceRegistry, 'executors'>
  readonly metrics: GatewayMetrics
  readonly now: () => number
}): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>()
  app.get('/healthz', (c) => c.json({ status: 'ok' }))
  app.get('/readyz', async (c) => {
    let executors
    try {
      executors = await deps.registry.executors()
    } catch (err) {
      throw noCapacity(`not ready: Redis unreachable (${errorMessage(err)})`, 1000, err)
    }
    const fresh = executors.filter((e) => deps.now() - e.at <= EXECUTOR_FRESH_MS)
    if (!fresh.length)
      throw noCapacity(`not ready: no executor heartbeat in the last ${EXECUTOR_FRESH_MS} ms`, 1000)
    return c.json({ status: 'ready', executors: fresh.map((e) => e.hostId) })
  })
  app.get('/metrics', async (c) => {
    const body = await deps.metrics.render()
    return c.body(body, 200, { 'content-type': deps.metrics.registry.contentType })
  })
  return app
}
