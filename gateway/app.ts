/**
 * The gateway's HTTP app: function routing and proxying, admin API, health and metrics, with one
 * onError that answers application/problem+json.
 */
import type { RequestListener } from 'node:http'
import { Hono } from 'hono'
import type { Logger } from 'pino'
import { InitlessError } from '../shared/errors.ts'
import type { InstanceRegistry } from '../shared/registry.ts'
import type { Admission } from './access/admission.ts'
import type { FunctionCatalog } from './catalog.ts'
import type { Forwarder } from './forwarder.ts'
import type { InstancePool } from './instance-pool.ts'
import type { DeathReports } from './instance-deaths.ts'
import { createGatewayMetrics, type GatewayMetrics } from './metrics.ts'
import { createGatewayListener } from './node-listener.ts'
import { problemResponse } from './problem.ts'
import { requestContext, type GatewayEnv } from './request-context.ts'
import { createAsyncAdminRoutes, createAsyncRoutes, type AsyncRouteDeps } from './async/routes.ts'
import { createAdminRoutes } from './routes/admin.ts'
import type { KeyRouteDeps } from './routes/keys.ts'
import { createHealthRoutes } from './routes/health.ts'
import type { LifecycleRouteDeps } from './routes/lifecycle.ts'
import type { SecretRouteDeps } from './routes/secrets.ts'
import { createInvoke, createInvokeRoutes } from './routes/invoke.ts'

export interface GatewayAppDeps {
  readonly catalog: FunctionCatalog
  readonly pool: Pick<
    InstancePool,
    'acquire' | 'tryAcquire' | 'prewarm' | 'stats' | 'onRestored' | 'setStartOverride' | 'startOverride'
  >
  readonly registry: Pick<InstanceRegistry, 'executors' | 'listAll' | 'publish' | 'requestRebake'>
  readonly forwarder: Forwarder
  readonly logger: Logger
  /** Reasons of instance deaths for ERR_INSTANCE_DIED, recycling past timeouts (instance-deaths.ts). */
  readonly deaths?: DeathReports
  /** The admin API's deploy, versions, rollback and delete routes. */
  readonly lifecycle?: LifecycleRouteDeps
  /** The admin API's secret routes. */
  readonly secrets?: SecretRouteDeps
  /** Invocation keys and rate limits; absent: every function is open and unlimited. */
  readonly access?: {
    readonly admission: Admission
    readonly keys: Omit<KeyRouteDeps, 'catalog'>
  }
  readonly options: {
    /** Largest request body proxied, in bytes. */
    readonly maxBodyBytes: number
    /** Unset: /admin answers 404. */
    readonly adminToken?: string | undefined
    readonly trustProxy: boolean
  }
  /** Default: a fresh registry per app. */
  readonly metrics?: GatewayMetrics
  /** Asynchronous invocations; absent: `/async-function` is 404 and `Prefer: respond-async` ignored. */
  readonly async?: Omit<AsyncRouteDeps, 'catalog' | 'maxBodyBytes' | 'trustProxy'>
  readonly now?: () => number
}

export interface Gateway {
  /** Every route; tests call app.request(). */
  readonly app: Hono<GatewayEnv>
  /** The node:http listener serving `app`, with the direct lane for function requests. */
  readonly listener: RequestListener
}

/** Build the gateway app from its ports. No I/O happens until a request arrives. */
export function createGatewayApp(deps: GatewayAppDeps): Hono<GatewayEnv> {
  return createGateway(deps).app
}

/** The app plus the Node listener to serve it with (node-listener.ts). No I/O until a request. */
export function createGateway(deps: GatewayAppDeps): Gateway {
  const logger = deps.logger.child({ module: 'http' })
  const metrics = deps.metrics ?? createGatewayMetrics({ stats: () => deps.pool.stats() })
  deps.pool.onRestored((record) => {
    if (record.phases) metrics.coldStart(record.fn, record.phases)
  })
  const invoke = createInvoke({
    catalog: deps.catalog,
    pool: deps.pool,
    forwarder: deps.forwarder,
    metrics,
    maxBodyBytes: deps.options.maxBodyBytes,
    trustProxy: deps.options.trustProxy,
    ...(deps.access ? { admission: deps.access.admission } : {}),
    ...(deps.deaths ? { deaths: deps.deaths } : {}),
  })
  const app = new Hono<GatewayEnv>()
  app.use('*', requestContext(logger))
  if (deps.async) {
    const asyncDeps = {
      ...deps.async,
      catalog: deps.catalog,
      maxBodyBytes: deps.options.maxBodyBytes,
      trustProxy: deps.options.trustProxy,
      ...(deps.access ? { admission: deps.access.admission } : {}),
    }
    app.route('/', createAsyncRoutes(asyncDeps))
    app.route(
      '/admin',
      createAsyncAdminRoutes({
        catalog: deps.catalog,
        store: deps.async.store,
        adminToken: deps.options.adminToken,
      }),
    )
  }
  app.route('/', createInvokeRoutes(invoke))
  app.route(
    '/admin',
    createAdminRoutes({
      catalog: deps.catalog,
      pool: deps.pool,
      registry: deps.registry,
      adminToken: deps.options.adminToken,
      ...(deps.lifecycle ? { lifecycle: deps.lifecycle } : {}),
      ...(deps.secrets ? { secrets: deps.secrets } : {}),
      ...(deps.access ? { keys: deps.access.keys } : {}),
    }),
  )
  app.route('/', createHealthRoutes({ registry: deps.registry, metrics, now: deps.now ?? Date.now }))
  app.notFound((c) => {
    const err = new InitlessError('ERR_GATEWAY_NOT_FOUND', `no route for ${c.req.method} ${c.req.path}`)
    return problemResponse(err, c.get('requestId'), c.get('log'))
  })
  app.onError((err, c) => problemResponse(err, c.get('requestId'), c.get('log')))
  return { app, listener: createGatewayListener({ app, invoke, logger }) }
}
