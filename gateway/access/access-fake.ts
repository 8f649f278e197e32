/**
 * The access control on fakes, for the gateway's unit tests: a fake key store followed by a real
 * key cache, a fake rate limiter on a settable clock, and the admission over both.
 */
import { createFakeApiKeyStore, type FakeApiKeyStore } from '../../shared/api-keys-fake.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import type { GatewayAppDeps } from '../app.ts'
import { createAdmission } from './admission.ts'
import { createKeyCache, type KeyCache } from './key-cache.ts'
import { createFakeRateLimiter, type FakeRateLimiter } from './rate-limiter-fake.ts'

export interface TestAccess {
  readonly store: FakeApiKeyStore
  readonly cache: KeyCache
  readonly limiter: FakeRateLimiter
  /** What createTestGateway takes as `access`. */
  readonly deps: NonNullable<GatewayAppDeps['access']>
  /** The limiter's clock, in ms; tests move it. */
  readonly clock: { now: number }
  close(): Promise<void>
}

export async function createTestAccess(
  o: { refreshIntervalMs?: number; trustProxy?: boolean } = {},
): Promise<TestAccess> {
  const logger = createSilentLogger()
  const store = createFakeApiKeyStore()
  const cache = createKeyCache({ store, logger, refreshIntervalMs: o.refreshIntervalMs ?? 60_000 })
  await cache.start()
  const clock = { now: 1_000_000 }
  const limiter = createFakeRateLimiter({ nowMs: () => clock.now })
  const admission = createAdmission({ keys: cache, limiter, trustProxy: o.trustProxy ?? false, logger })
  return {
    store,
    cache,
    limiter,
    clock,
    deps: { admission, keys: { store, cache } },
    close: () => cache.close(),
  }
}
