/**
 * `/admin/functions/<name>/keys`: create, list and revoke a function's invocation keys. Mounted by
 * the admin routes behind their bearer token and body limit. A created key is in the answer once
 * and nowhere else: the store keeps its hash, logs name only its id.
 */
import { Hono, type Context } from 'hono'
import { z } from 'zod'
import { API_KEY_ID_RE, keyInfo, MAX_KEY_NAME, type ApiKeyStore } from '../../shared/api-keys.ts'
import { errorMessage, InitlessError, isInitlessError } from '../../shared/errors.ts'
import { FUNCTION_NAME_RE } from '../../shared/manifest.ts'
import type { KeyCache } from '../access/key-cache.ts'
import type { FunctionCatalog } from '../catalog.ts'
import { noCapacity } from '../pool-state.ts'
import type { GatewayEnv } from '../request-context.ts'

export interface KeyRouteDeps {
  readonly catalog: Pick<FunctionCatalog, 'get'>
  readonly store: Pick<ApiKeyStore, 'create' | 'list' | 'revoke'>
  /** This gateway's cache: an answer is sent once this gateway itself sees the change. */
  readonly cache: Pick<KeyCache, 'refreshOne'>
}

const createBody = z
  .object({
    name: z
      .string()
      .min(1)
      .max(MAX_KEY_NAME)
      .regex(/^[\x20-\x7e]+$/, 'printable ASCII'),
  })
  .partial()
  .strict()

const fnName = (c: Context<GatewayEnv>): string => {
  const name = c.req.param('name') ?? ''
  if (!FUNCTION_NAME_RE.test(name))
    throw new InitlessError(
      'ERR_FUNCTION_NAME_INVALID',
      'the path does not name a function (lowercase DNS label)',
    )
  return name
}

/** A store call; Redis out of reach is a 503 the caller may retry. */
async function storeCall<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call()
  } catch (err) {
    if (isInitlessError(err)) throw err
    throw noCapacity(`key store unavailable (${errorMessage(err)})`, 1000, err)
  }
}

async function parseCreateBody(c: Context<GatewayEnv>): Promise<{ name?: string | undefined }> {
  const text = await c.req.text()
  if (!text.trim()) return {}
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    json = Symbol('not json')
  }
  const parsed = createBody.safeParse(json)
  if (!parsed.success)
    throw new InitlessError(
      'ERR_GATEWAY_BAD_REQUEST',
      `expected no body or a JSON body {"name"?: <1 to ${MAX_KEY_NAME} printable ASCII characters>}`,
    )
  return parsed.data
}

/** Routes mounted inside the admin group (which checks the token and limits bodies). */
export function createKeyRoutes(deps: KeyRouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>()

  app.get('/functions/:name/keys', async (c) => {
    const fn = fnName(c)
    const manifest = deps.catalog.get(fn)
    const keys = await storeCall(() => deps.store.list(fn))
    // Keys of a function that is gone can still be listed and revoked.
    if (!manifest && !keys.length)
      throw new InitlessError('ERR_FUNCTION_NOT_FOUND', `no function named ${fn}`)
    return c.json({ fn, auth: manifest?.auth.type ?? null, keys: keys.map(keyInfo) })
  })

  app.post('/functions/:name/keys', async (c) => {
    const fn = fnName(c)
    const manifest = deps.catalog.get(fn)
    if (!manifest) throw new InitlessError('ERR_FUNCTION_NOT_FOUND', `no function named ${fn}`)
    const body = await parseCreateBody(c)
    const { key, record } = await storeCall(() => deps.store.create(fn, body.name ? { name: body.name } : {}))
    await deps.cache.refreshOne(fn)
    c.get('log').info({ fn, keyId: record.id }, 'key created')
    c.header('cache-control', 'no-store')
    return c.json({ ...keyInfo(record), key, auth: manifest.auth.type }, 201)
  })

  app.delete('/functions/:name/keys/:id', async (c) => {
    const fn = fnName(c)
    const id = c.req.param('id')
    if (!API_KEY_ID_RE.test(id))
      throw new InitlessError(
        'ERR_GATEWAY_BAD_REQUEST',
        'a key id is 12 hexadecimal digits (initless keys list)',
      )
    if (!(await storeCall(() => deps.store.revoke(fn, id))))
      throw new InitlessError('ERR_KEY_NOT_FOUND', `${fn} has no key ${id}`)
    await deps.cache.refreshOne(fn)
    c.get('log').info({ fn, keyId: id }, 'key revoked')
    return c.json({ fn, id, revoked: true })
  })
  return app
}
