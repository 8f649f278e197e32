/**
 * `/admin/secrets` (mounted by routes/admin.ts, behind its bearer token and its 64 KiB body
 * limit): set, list and remove secret values. A value travels only in a PUT's body and is sealed
 * before it is stored (shared/secret-crypto.ts); no answer and no log line ever carries it.
 *
 *   GET    /secrets[?scope=<scope>]   names and update times
 *   PUT    /secrets/<scope>/<name>    the raw body is the value (201 created, 200 replaced)
 *   DELETE /secrets/<scope>/<name>    404 ERR_SECRET_NOT_FOUND when there is none
 */
import { Hono } from 'hono'
import { errorMessage, InitlessError } from '../../shared/errors.ts'
import {
  checkSecretRef,
  checkSecretScope,
  checkSecretValue,
  declaredSecrets,
  type SecretStore,
} from '../../shared/secrets.ts'
import type { FunctionCatalog } from '../catalog.ts'
import { noCapacity } from '../pool-state.ts'
import type { GatewayEnv } from '../request-context.ts'

export interface SecretRouteDeps {
  readonly store: Pick<SecretStore, 'set' | 'list' | 'remove'>
  /** The deployed functions: a value is set only for a scope one of them uses. */
  readonly catalog: Pick<FunctionCatalog, 'get' | 'list'>
  /** Whether values are encrypted at rest (INITLESS_SECRETS_KEY_FILE set): said in each answer. */
  readonly encrypted: boolean
}

/**
 * A scope values may be set in: a deployed function's name, or a scope a deployed function lists
 * (`scope/name`). Refusing others catches a misspelt function name, whose value no instance would
 * ever read. Listing and removing take any scope (clean-up after a function was deleted).
 */
export function isKnownScope(catalog: Pick<FunctionCatalog, 'get' | 'list'>, scope: string): boolean {
  if (catalog.get(scope)) return true
  return catalog.list().some((m) => declaredSecrets(m.name, m.secrets).some((r) => r.scope === scope))
}

export function createSecretRoutes(deps: SecretRouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>()
  const storeCall = async <T>(call: () => Promise<T>): Promise<T> => {
    try {
      return await call()
    } catch (err) {
      throw noCapacity(`secret store unavailable (${errorMessage(err)})`, 1000, err)
    }
  }

  app.get('/secrets', async (c) => {
    const scope = c.req.query('scope')
    if (scope !== undefined) checkSecretScope(scope)
    const secrets = await storeCall(() => deps.store.list(scope))
    return c.json({ secrets, encrypted: deps.encrypted })
  })

  app.put('/secrets/:scope/:name', async (c) => {
    const ref = checkSecretRef(c.req.param('scope'), c.req.param('name'))
    if (!isKnownScope(deps.catalog, ref.scope))
      throw new InitlessError(
        'ERR_FUNCTION_NOT_FOUND',
        `no function named ${ref.scope} and no function lists a secret of scope ${ref.scope} (deploy it first)`,
      )
    const value = checkSecretValue(Buffer.from(await c.req.arrayBuffer()))
    const { created, updatedAt } = await storeCall(() => deps.store.set(ref, value))
    c.get('log').info({ ...ref, created, encrypted: deps.encrypted }, 'secret set')
    return c.json({ ...ref, updatedAt, created, encrypted: deps.encrypted }, created ? 201 : 200)
  })

  app.delete('/secrets/:scope/:name', async (c) => {
    const ref = checkSecretRef(c.req.param('scope'), c.req.param('name'))
    if (!(await storeCall(() => deps.store.remove(ref))))
      throw new InitlessError('ERR_SECRET_NOT_FOUND', `no secret ${ref.scope}/${ref.name}`)
    c.get('log').info({ ...ref }, 'secret removed')
    return c.json({ ...ref, removed: true })
  })

  // Any other method or shape under /secrets: say what exists instead of a bare 404.
  app.all('/secrets/*', (c) => {
    throw new InitlessError(
      'ERR_GATEWAY_NOT_FOUND',
      `no route for ${c.req.method} ${c.req.path} (GET /admin/secrets, PUT or DELETE /admin/secrets/<scope>/<name>)`,
    )
  })
  return app
}
