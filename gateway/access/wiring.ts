/**
 * The gateway's access control, built from its Redis client: the key store, this gateway's key
 * cache following it, the rate limiter, and the admission that uses both.
 */
import type { Logger } from 'pino'
import { createRedisApiKeyStore } from '../../shared/api-keys.ts'
import type { Redis } from '../../shared/redis.ts'
import type { GatewayConfig } from '../config.ts'
import { createAdmission, type Admission } from './admission.ts'
import { createKeyCache } from './key-cache.ts'
import { createRedisRateLimiter } from './rate-limiter.ts'
import type { KeyRouteDeps } from '../routes/keys.ts'

export interface Access {
  readonly deps: { readonly admission: Admission; readonly keys: Omit<KeyRouteDeps, 'catalog'> }
  /** Revoke every key of a deleted function; this gateway applies it before resolving. */
  revokeAll(fn: string): Promise<void>
  /** Subscribe and read every key; resolves once the first read is done. */
  start(): Promise<void>
  close(): Promise<void>
}

export function startAccess(
  config: Pick<GatewayConfig, 'INITLESS_KEY_PREFIX' | 'INITLESS_REGISTRY_REFRESH' | 'INITLESS_TRUST_PROXY'>,
  deps: { readonly redis: Redis; readonly logger: Logger },
): Access {
  const prefix = config.INITLESS_KEY_PREFIX
  const store = createRedisApiKeyStore({ redis: deps.redis, logger: deps.logger, prefix })
  const cache = createKeyCache({
    store,
    logger: deps.logger,
    refreshIntervalMs: config.INITLESS_REGISTRY_REFRESH,
  })
  const admission = createAdmission({
    keys: cache,
    limiter: createRedisRateLimiter({ redis: deps.redis, prefix }),
    trustProxy: config.INITLESS_TRUST_PROXY,
    logger: deps.logger,
  })
  return {
    deps: { admission, keys: { store, cache } },
    async revokeAll(fn) {
      const revoked = await store.revokeAll(fn)
      await cache.refreshOne(fn)
      if (revoked) deps.logger.info({ fn, revoked }, 'keys of a deleted function revoked')
    },
    start: () => cache.start(),
    close: () => cache.close(),
  }
}
