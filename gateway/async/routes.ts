/**
 * Asynchronous invocation routes: accepting (`ANY /async-function/<name>/<path>`, and `/fn/...`
 * with `Prefer: respond-async`), `GET /invocations/<id>`, and the operators' routes under /admin.
 * An invocation is answered 202 only once Redis acknowledged storing it.
 */
import type { IncomingHttpHeaders } from 'node:http'
import { Hono, type Context } from 'hono'
import { InitlessError } from '../../shared/errors.ts'
import { FUNCTION_NAME_RE } from '../../shared/manifest.ts'
import type { Admission, AdmissionRequest } from '../access/admission.ts'
import type { FunctionCatalog } from '../catalog.ts'
import { bodyTooLarge, forwardedHeaders, withoutHopByHop } from '../forwarder.ts'
import { requestHeader, type GatewayEnv } from '../request-context.ts'
import { adminAuth } from '../routes/admin.ts'
import { splitUrl } from '../routes/invoke.ts'
import type { CallbackPolicy } from './callback-target.ts'
import type { InvocationStore, PurgeState } from './bullmq-invocations.ts'
import {
  functionOfId,
  IDEMPOTENCY_KEY_RE,
  INVOCATION_STATES,
  newInvocationId,
  requestHash,
  type InvocationData,
  type InvocationState,
  type StoredRequest,
} from './invocation.ts'

export interface AsyncRouteDeps {
  readonly catalog: Pick<FunctionCatalog, 'get' | 'list'>
  readonly store: InvocationStore
  readonly callbacks: Pick<CallbackPolicy, 'check'>
  /** INITLESS_MAX_BODY: async.maxBody never goes beyond it. */
  readonly maxBodyBytes: number
  readonly trustProxy: boolean
  readonly onAccepted?: (fn: string, isDuplicate: boolean) => void
  /** Keys and rate limits (accepting is limited like a synchronous request; reading a result needs the key). */
  readonly admission?: Admission
  readonly now?: () => number
}

const ASYNC_PREFIX = '/async-function/'

/** Headers of the accepting request that are about the acceptance, not for the function. */
const ACCEPT_ONLY = new Set(['prefer', 'x-callback-url', 'idempotency-key', 'content-length', 'host'])

/** Whether a Prefer header asks for respond-async (RFC 7240; other preferences may follow). */
export function prefersAsync(prefer: string | undefined): boolean {
  if (!prefer) return false
  return prefer.split(',').some((p) => p.split(';')[0]?.trim().toLowerCase() === 'respond-async')
}

/** The request body, refusing more than `max` bytes (ERR_GATEWAY_BODY_TOO_LARGE). */
async function readBody(request: Request, max: number): Promise<Buffer> {
  if (!request.body) return Buffer.alloc(0)
  const reader = (request.body as ReadableStream<Uint8Array>).getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  for (;;) {
    const { done, value } = (await reader.read()) as { done: boolean; value?: Uint8Array }
    if (done || !value) break
    size += value.length
    if (size > max) {
      await reader.cancel().catch(() => undefined)
      throw bodyTooLarge(max)
    }
    chunks.push(value)
  }
  return Buffer.concat(chunks)
}

function headersOf(c: Context<GatewayEnv>, drop?: ReadonlySet<string>): Record<string, string> {
  const incoming: IncomingHttpHeaders = c.env?.incoming?.headers ?? Object.fromEntries(c.req.raw.headers)
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(withoutHopByHop(incoming))) {
    // A platform key is never stored with the invocation nor sent to the function.
    if (v === undefined || ACCEPT_ONLY.has(k) || drop?.has(k)) continue
    out[k] = Array.isArray(v) ? v.join(', ') : String(v)
  }
  return out
}

const notFound = (id: string) =>
  new InitlessError('ERR_INVOCATION_NOT_FOUND', `no invocation ${id} (unknown, or past its retention)`)

/**
 * The id, if it names a function of the catalog. Checked before any Redis call: an id of an
 * unknown function would otherwise open a queue (a connection) for whatever name it carries.
 */
function knownInvocation(catalog: Pick<FunctionCatalog, 'get'>, id: string): string {
  const fn = functionOfId(id)
  if (!fn || !catalog.get(fn)) throw notFound(id)
  return id
}

const admissionRequest = (c: Context<GatewayEnv>): AdmissionRequest => ({
  header: (name) => requestHeader(c, name),
  remoteAddress: c.env?.incoming?.socket.remoteAddress,
})

/** Routes mounted at the app root: accepting and reading invocations. */
export function createAsyncRoutes(deps: AsyncRouteDeps): Hono<GatewayEnv> {
  const now = deps.now ?? Date.now
  const app = new Hono<GatewayEnv>()

  const accept = async (c: Context<GatewayEnv>, prefix: string) => {
    const url = splitUrl(c.req.url)
    const rest = url.pathname.slice(prefix.length)
    const slash = rest.indexOf('/')
    const name = slash < 0 ? rest : rest.slice(0, slash)
    if (!FUNCTION_NAME_RE.test(name))
      throw new InitlessError(
        'ERR_FUNCTION_NAME_INVALID',
        'the path does not name a function (lowercase DNS label)',
      )
    const manifest = deps.catalog.get(name)
    if (!manifest) throw new InitlessError('ERR_FUNCTION_NOT_FOUND', `no function named ${name}`)
    const admitted = deps.admission?.isGuarded(manifest)
      ? await deps.admission.admit(manifest, admissionRequest(c))
      : undefined
    const max = Math.min(manifest.async.maxBody, deps.maxBodyBytes)
    const length = requestHeader(c, 'content-length')
    if (length !== undefined && Number(length) > max) throw bodyTooLarge(max)

    const callbackUrl = requestHeader(c, 'x-callback-url')
    if (callbackUrl !== undefined) await deps.callbacks.check(callbackUrl)
    const idempotencyKey = requestHeader(c, 'idempotency-key')
    if (idempotencyKey !== undefined && !IDEMPOTENCY_KEY_RE.test(idempotencyKey))
      throw new InitlessError(
        'ERR_GATEWAY_BAD_REQUEST',
        'Idempotency-Key must be 1 to 255 printable ASCII characters without spaces',
      )
    const body = await readBody(c.req.raw, max)
    const headers = {
      ...headersOf(c, admitted?.dropHeaders),
      ...forwardedHeaders({
        forwardedFor: requestHeader(c, 'x-forwarded-for'),
        forwardedProto: requestHeader(c, 'x-forwarded-proto'),
        forwardedHost: requestHeader(c, 'x-forwarded-host'),
        host: requestHeader(c, 'host') ?? url.host,
        remoteAddress: c.env?.incoming?.socket.remoteAddress,
        protocol: url.isHttps ? 'https' : 'http',
        trustProxy: deps.trustProxy,
      }),
      ...(body.length ? { 'content-length': String(body.length) } : {}),
    }
    const request: StoredRequest = {
      method: c.req.method,
      path: (slash < 0 ? '/' : rest.slice(slash)) + url.search,
      headers,
      body: body.toString('base64'),
    }
    const id = newInvocationId(name, idempotencyKey)
    const data: InvocationData = {
      id,
      fn: name,
      request,
      acceptedAt: now(),
      requestId: c.get('requestId'),
      requestHash: requestHash(name, request),
      ...(callbackUrl === undefined ? {} : { callbackUrl }),
      ...(idempotencyKey === undefined ? {} : { idempotencyKey }),
    }
    const { isDuplicate } = await deps.store.accept(data, manifest)
    deps.onAccepted?.(name, isDuplicate)
    c.get('log').info({ fn: name, invocationId: id, isDuplicate }, 'invocation accepted')
    const location = `/invocations/${id}`
    c.header('x-invocation-id', id)
    c.header('location', location)
    if (prefix !== ASYNC_PREFIX) c.header('preference-applied', 'respond-async')
    return c.json({ id, fn: name, location, isDuplicate }, 202)
  }

  app.all('/async-function/:name/*', (c) => accept(c, ASYNC_PREFIX))
  app.all('/async-function/:name', (c) => accept(c, ASYNC_PREFIX))
  app.use('/fn/:name/*', async (c: Context<GatewayEnv>, next) => {
    if (!prefersAsync(requestHeader(c, 'prefer'))) return next()
    return accept(c, '/fn/')
  })

  app.get('/invocations/:id', async (c) => {
    const id = knownInvocation(deps.catalog, c.req.param('id'))
    const manifest = deps.catalog.get(functionOfId(id) ?? '')
    if (manifest && deps.admission) deps.admission.authenticate(manifest, admissionRequest(c))
    const view = await deps.store.get(id)
    if (!view) throw notFound(id)
    return c.json(view)
  })
  return app
}

/** Operators' routes, mounted at /admin behind the admin token. */
export function createAsyncAdminRoutes(deps: {
  readonly catalog: Pick<FunctionCatalog, 'get' | 'list'>
  readonly store: InvocationStore
  readonly adminToken?: string | undefined
}): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>()
  app.use('*', adminAuth(deps.adminToken))
  const manifestOf = (name: string) => {
    const m = deps.catalog.get(name)
    if (!m) throw new InitlessError('ERR_FUNCTION_NOT_FOUND', `no function named ${name}`)
    return m
  }

  app.get('/invocations', async (c) => {
    const fn = c.req.query('fn')
    const state = c.req.query('state')
    const limit = Number(c.req.query('limit') ?? 100)
    if (state !== undefined && !(INVOCATION_STATES as readonly string[]).includes(state))
      throw new InitlessError(
        'ERR_GATEWAY_BAD_REQUEST',
        `state must be one of ${INVOCATION_STATES.join(', ')}`,
      )
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000)
      throw new InitlessError('ERR_GATEWAY_BAD_REQUEST', 'limit must be a whole number from 1 to 10000')
    const fns = fn === undefined ? deps.catalog.list().map((m) => m.name) : [manifestOf(fn).name]
    const lists = await Promise.all(
      fns.map((name) =>
        deps.store.list({ fn: name, limit, ...(state ? { state: state as InvocationState } : {}) }),
      ),
    )
    const invocations = lists
      .flat()
      .sort((a, b) => b.acceptedAt - a.acceptedAt)
      .slice(0, limit)
    return c.json({ invocations })
  })

  app.post('/invocations/:id/redrive', async (c) => {
    const redriven = await deps.store.redrive({ id: knownInvocation(deps.catalog, c.req.param('id')) })
    return c.json({ redriven }, 202)
  })

  app.post('/functions/:name/redrive', async (c) => {
    const redriven = await deps.store.redrive({ fn: manifestOf(c.req.param('name')).name })
    return c.json({ redriven }, 202)
  })

  app.delete('/functions/:name/invocations', async (c) => {
    const fn = manifestOf(c.req.param('name')).name
    const state = c.req.query('state') ?? 'dead'
    if (!['dead', 'finished', 'queued'].includes(state))
      throw new InitlessError('ERR_GATEWAY_BAD_REQUEST', 'state must be dead, finished or queued')
    const purged = await deps.store.purge(fn, state as PurgeState)
    return c.json({ fn, state, purged })
  })
  return app
}
