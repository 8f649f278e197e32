/**
 * Admission of a request to a function with `auth.type: key` or a `rateLimit` (docs/security.md):
 * the key check (in-process, key-cache.ts), then the rate limits (one Redis round trip,
 * rate-limiter.ts). Functions with neither never get here: they pay nothing.
 *
 * A key travels in `X-Api-Key: <key>` or `Authorization: Bearer <key>`; X-Api-Key wins when both
 * are sent, so a function may keep Authorization for its own scheme. The platform key never reaches
 * the function: X-Api-Key is dropped, and Authorization too when it carries the key (or any token
 * in the key format).
 */
import type { Logger } from 'pino'
import { API_KEY_PREFIX } from '../../shared/api-keys.ts'
import { errorMessage, InitlessError } from '../../shared/errors.ts'
import type { Manifest } from '../../shared/manifest.ts'
import type { KeyCache } from './key-cache.ts'
import type { Bucket, RateLimiter } from './rate-limiter.ts'

export interface AdmissionRequest {
  readonly header: (name: string) => string | undefined
  /** The TCP peer's address, when known. */
  readonly remoteAddress: string | undefined
}

export interface Admitted {
  /** The id of the key the request carried (auth.type key). */
  readonly keyId?: string
  /** Request headers the function must not see. */
  readonly dropHeaders?: ReadonlySet<string>
}

export interface Admission {
  /** Whether requests to `manifest` need admit(): a key, a rate limit or both. */
  isGuarded(manifest: Manifest): boolean
  /** Check the key and take from the rate limits; throws ERR_KEY_* or ERR_RATE_LIMITED. */
  admit(manifest: Manifest, req: AdmissionRequest): Promise<Admitted>
  /** The key check alone (reading an invocation's result is not rate limited). */
  authenticate(manifest: Manifest, req: AdmissionRequest): Admitted
}

/** A limiter that has not answered within this lets the request through (logged), in ms. */
export const LIMITER_TIMEOUT_MS = 500

const BEARER_RE = /^Bearer[ \t]+(\S+)[ \t]*$/i
const DROP_KEY_HEADER: ReadonlySet<string> = new Set(['x-api-key'])
const DROP_BOTH: ReadonlySet<string> = new Set(['x-api-key', 'authorization'])

/** The bucket a manifest's rate sets up: burst defaults to one second's worth, at least 1. */
export function bucketOf(rate: number | undefined, burst: number | undefined): Bucket | undefined {
  return rate === undefined ? undefined : { rate, burst: burst ?? Math.max(1, Math.ceil(rate)) }
}

/** Whole seconds (RFC 9110 §10.2.3), rounded up, at least 1. */
export function retryAfterSeconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000))
}

/** The client a per-client limit counts: the key id, else the source address. */
export function clientOf(req: AdmissionRequest, keyId: string | undefined, trustProxy: boolean): string {
  if (keyId !== undefined) return `key:${keyId}`
  // Behind a trusted proxy the address it saw is the last one it appended.
  const forwarded = trustProxy ? req.header('x-forwarded-for')?.split(',').at(-1)?.trim() : undefined
  return `addr:${forwarded || req.remoteAddress || 'unknown'}`
}

export function createAdmission(deps: {
  readonly keys: Pick<KeyCache, 'verify'>
  readonly limiter: RateLimiter
  readonly trustProxy: boolean
  readonly logger: Logger
  readonly limiterTimeoutMs?: number
}): Admission {
  const log = deps.logger.child({ module: 'admission' })
  const timeoutMs = deps.limiterTimeoutMs ?? LIMITER_TIMEOUT_MS
  let lastWarnAt = 0

  const authenticate = (manifest: Manifest, req: AdmissionRequest): Admitted => {
    if (manifest.auth.type !== 'key') return {}
    const apiKey = req.header('x-api-key')
    const bearer = BEARER_RE.exec(req.header('authorization') ?? '')?.[1]
    const presented = apiKey ?? bearer
    const realm = `Bearer realm="initless", scope="${manifest.name}"`
    if (presented === undefined) {
      throw new InitlessError('ERR_KEY_REQUIRED', `${manifest.name} needs a key (X-Api-Key or Bearer)`, {
        details: { wwwAuthenticate: realm },
      })
    }
    const keyId = deps.keys.verify(manifest.name, presented.trim())
    if (keyId === undefined) {
      throw new InitlessError('ERR_KEY_INVALID', `the key is not a current key of ${manifest.name}`, {
        details: { wwwAuthenticate: `${realm}, error="invalid_token"` },
      })
    }
    const isBearerPlatformKey =
      bearer !== undefined && (apiKey === undefined || bearer.startsWith(API_KEY_PREFIX))
    return { keyId, dropHeaders: isBearerPlatformKey ? DROP_BOTH : DROP_KEY_HEADER }
  }

  const limit = async (manifest: Manifest, client: string): Promise<void> => {
    const r = manifest.rateLimit
    if (!r) return
    const perFunction = bucketOf(r.perFunction, r.burst)
    const perClient = bucketOf(r.perClient, r.burst)
    let timer: NodeJS.Timeout | undefined
    try {
      const decision = await Promise.race([
        deps.limiter.take(manifest.name, client, {
          ...(perFunction ? { perFunction } : {}),
          ...(perClient ? { perClient } : {}),
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
        }),
      ])
      if (decision.isAllowed) return
      const retryAfterS = retryAfterSeconds(decision.retryAfterMs)
      throw new InitlessError(
        'ERR_RATE_LIMITED',
        `${manifest.name}: rate limit exceeded, retry in ${retryAfterS} s`,
        {
          details: { retryAfterS },
        },
      )
    } catch (err) {
      if (err instanceof InitlessError) throw err
      // The limits brake abuse; access control is the key's. A Redis outage must not take down
      // every limited function, so the request passes (logged at most once a second).
      const now = Date.now()
      if (now - lastWarnAt >= 1000) {
        lastWarnAt = now
        log.warn(
          { fn: manifest.name, err: errorMessage(err) },
          'rate limiter unavailable, request let through',
        )
      }
    } finally {
      clearTimeout(timer)
    }
  }

  return {
    isGuarded: (m) => m.auth.type === 'key' || m.rateLimit !== undefined,
    authenticate,
    async admit(manifest, req) {
      const admitted = authenticate(manifest, req)
      await limit(manifest, clientOf(req, admitted.keyId, deps.trustProxy))
      return admitted
    },
  }
}
