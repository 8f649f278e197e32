/**
 * `/admin`: operator API behind a bearer token (INITLESS_ADMIN_TOKEN). Without a token configured
 * the whole group answers 404, as if it did not exist.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { Hono, type MiddlewareHandler } from 'hono'
import { bodyLimit } from 'hono/body-limit'
import { z } from 'zod'
import { RUNTIME_KINDS, type RegistryEvent } from '../../shared/contracts.ts'
import { errorMessage, InitlessError } from '../../shared/errors.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import type { FunctionCatalog } from '../catalog.ts'
import type { InstancePool } from '../instance-pool.ts'
import { noCapacity } from '../pool-state.ts'
import type { GatewayEnv } from '../request-context.ts'
import { createKeyRoutes, type KeyRouteDeps } from './keys.ts'
import { createLifecycleRoutes, type LifecycleRouteDeps } from './lifecycle.ts'
import { createSecretRoutes, type SecretRouteDeps } from './secrets.ts'

export interface AdminRouteDeps {
  readonly catalog: FunctionCatalog
  readonly pool: Pick<InstancePool, 'prewarm' | 'stats' | 'setStartOverride' | 'startOverride'>
  readonly registry: Pick<InstanceRegistry, 'listAll' | 'publish' | 'requestRebake'>
  readonly adminToken?: string | undefined
  /** Deploy, versions, rollback, delete (absent: a gateway without the function registry). */
  readonly lifecycle?: LifecycleRouteDeps
  /** Secret values (absent: a gateway without a secret store; /admin/secrets is 404). */
  readonly secrets?: SecretRouteDeps
  /** Invocation keys (absent: a gateway without a key store). */
  readonly keys?: Omit<KeyRouteDeps, 'catalog'>
}

const scaleBody = z.object({ instances: z.number().int().min(0).max(1000) }).strict()
const runtimeBody = z
  .object({ runtime: z.enum(RUNTIME_KINDS).optional(), noPool: z.boolean().optional() })
  .strict()

/** Largest admin request body, bytes. */
export const ADMIN_MAX_BODY = 64 * 1024
/** A deploy's upload: the one admin request with a body of its own limit. */
const DEPLOY_PATH = /\/functions\/[^/]+$/

const digest = (s: string) => createHash('sha256').update(s).digest()

/** Constant-time token check: both sides are hashed first, so lengths leak nothing either. */
export function isTokenValid(header: string | undefined, token: string): boolean {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '')
  return timingSafeEqual(digest(m?.[1] ?? ''), digest(token)) && m !== null
}

/** The admin API's guard: 404 without a configured token, 401 without the right bearer token. */
export function adminAuth(adminToken: string | undefined): MiddlewareHandler<GatewayEnv> {
  return async (c, next) => {
    if (!adminToken)
      throw new InitlessError('ERR_GATEWAY_NOT_FOUND', `no route for ${c.req.method} ${c.req.path}`)
    if (!isTokenValid(c.req.header('authorization'), adminToken)) {
      throw new InitlessError('ERR_GATEWAY_UNAUTHORIZED', 'a valid admin bearer token is required')
    }
    await next()
  }
}

/** Routes mounted at /admin. */
export function createAdminRoutes(deps: AdminRouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>()
  const { adminToken } = deps
  const registryCall = async <T>(call: () => Promise<T>): Promise<T> => {
    try {
      return await call()
    } catch (err) {
      throw noCapacity(`instance registry unavailable (${errorMessage(err)})`, 1000, err)
    }
  }
  const manifestOf = (name: string) => {
    const m = deps.catalog.get(name)
    if (!m) throw new InitlessError('ERR_FUNCTION_NOT_FOUND', `no function named ${name}`)
    return m
  }

  app.use('*', adminAuth(adminToken))
  // Admin bodies are a few bytes of JSON: a larger one is refused before it is read whole. A
  // deploy's build context (PUT /functions/<name>) is the exception: its route reads the upload
  // with its own limit (INITLESS_MAX_CONTEXT).
  const smallBodies: MiddlewareHandler<GatewayEnv> = bodyLimit({
    maxSize: ADMIN_MAX_BODY,
    onError: () => {
      throw new InitlessError(
        'ERR_GATEWAY_BODY_TOO_LARGE',
        `admin request bodies are limited to ${ADMIN_MAX_BODY} bytes`,
      )
    },
  })
  const limitBody: MiddlewareHandler<GatewayEnv> = (c, next) =>
    deps.lifecycle && c.req.method === 'PUT' && DEPLOY_PATH.test(c.req.path) ? next() : smallBodies(c, next)
  app.use('*', limitBody)
  if (deps.lifecycle) app.route('/', createLifecycleRoutes(deps.lifecycle))
  if (deps.secrets) app.route('/', createSecretRoutes(deps.secrets))
  if (deps.keys) app.route('/', createKeyRoutes({ ...deps.keys, catalog: deps.catalog }))

  app.get('/functions', (c) => {
    const stats = new Map(deps.pool.stats().map((s) => [s.fn, s]))
    const functions = deps.catalog.list().map((m) => {
      const { ready = 0, starting = 0, waiting = 0, inflight = 0 } = stats.get(m.name) ?? {}
      const startOverride = deps.pool.startOverride(m.name) ?? null
      return {
        name: m.name,
        version: deps.catalog.version(m.name) ?? null,
        scaling: m.scaling,
        timeouts: m.timeouts,
        ready,
        starting,
        waiting,
        inflight,
        startOverride,
      }
    })
    return c.json({ functions })
  })

  app.get('/instances', async (c) => c.json({ instances: await registryCall(() => deps.registry.listAll()) }))

  app.post('/functions/:name/scale', async (c) => {
    const manifest = manifestOf(c.req.param('name'))
    const parsed = scaleBody.safeParse(await c.req.json().catch(() => undefined))
    if (!parsed.success) {
      throw new InitlessError(
        'ERR_GATEWAY_BAD_REQUEST',
        'expected a JSON body {"instances": <integer 0..1000>}',
      )
    }
    const { instances } = parsed.data
    if (instances === 0) {
      const event: RegistryEvent = { type: 'function', fn: manifest.name, action: 'scale-to-zero' }
      await registryCall(() => deps.registry.publish(event))
      c.get('log').info({ fn: manifest.name }, 'scale to zero requested')
      return c.json({ fn: manifest.name, action: 'scale-to-zero' }, 202)
    }
    const started = await deps.pool.prewarm(manifest, instances, c.get('requestId'))
    c.get('log').info(
      { fn: manifest.name, requested: instances, started: started.length },
      'prewarm requested',
    )
    return c.json({ fn: manifest.name, action: 'prewarm', requested: instances, started }, 202)
  })

  // Force the runtime (and pool use) of the restores THIS gateway starts for a function, e.g. to
  // measure each runtime through the gateway (bench/). Not shared with other gateways; DELETE clears.
  app.put('/functions/:name/runtime', async (c) => {
    const manifest = manifestOf(c.req.param('name'))
    const parsed = runtimeBody.safeParse(await c.req.json().catch(() => undefined))
    if (!parsed.success) {
      throw new InitlessError(
        'ERR_GATEWAY_BAD_REQUEST',
        `expected a JSON body {"runtime"?: ${RUNTIME_KINDS.map((k) => `"${k}"`).join(' | ')}, "noPool"?: boolean}`,
      )
    }
    deps.pool.setStartOverride(manifest.name, parsed.data)
    const startOverride = deps.pool.startOverride(manifest.name) ?? null
    c.get('log').warn({ fn: manifest.name, startOverride }, 'start override set')
    return c.json({ fn: manifest.name, startOverride })
  })

  app.delete('/functions/:name/runtime', (c) => {
    const manifest = manifestOf(c.req.param('name'))
    deps.pool.setStartOverride(manifest.name, undefined)
    c.get('log').info({ fn: manifest.name }, 'start override cleared')
    return c.json({ fn: manifest.name, startOverride: null })
  })

  app.post('/functions/:name/rebake', async (c) => {
    const manifest = manifestOf(c.req.param('name'))
    await registryCall(() => deps.registry.requestRebake(manifest.name))
    c.get('log').info({ fn: manifest.name }, 'rebake requested')
    return c.json({ fn: manifest.name, action: 'rebake' }, 202)
  })
  return app
}
