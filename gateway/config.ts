/**
 * Gateway configuration: the shared keys plus the gateway's own, validated once and frozen.
 * Every default is written out with its unit; durations and sizes accept units (`10s`, `10Mi`).
 */
import { z } from 'zod'
import { addressList } from './async/callback-target.ts'
import { commonEnvSchema, envBool, envBytes, envDuration, envInt, parseEnv } from '../shared/config-schema.ts'

export const gatewayEnvSchema = commonEnvSchema.extend({
  INITLESS_GATEWAY_HOST: z
    .string()
    .min(1)
    .default('127.0.0.1')
    .describe('Address to listen on. Default 127.0.0.1.'),
  INITLESS_GATEWAY_PORT: envInt(8080, 0, 65535).describe(
    'TCP port to listen on (0: any free port). Default 8080.',
  ),
  INITLESS_GATEWAY_WORKERS: envInt(1, 1, 64).describe(
    'Gateway processes serving the port (count; node:cluster workers under one primary that keeps ' +
      "every instance's scaling.concurrency exact across them and has one worker decide each " +
      "function's scale-up, on their summed demand). Default 1.",
  ),
  INITLESS_MAX_BODY: envBytes('10Mi').describe(
    'Largest request body proxied to a function, in bytes (units accepted). Default 10Mi = 10485760 bytes.',
  ),
  INITLESS_MAX_HEADER_SIZE: envBytes('16Ki').describe(
    'Largest request line plus headers, in bytes (units accepted); 431 beyond. Default 16Ki = 16384 bytes.',
  ),
  INITLESS_HEADERS_TIMEOUT: envDuration('10s').describe(
    "A request's headers must arrive within this from its first byte (slowloris), in ms; 408 after. " +
      'Default 10s = 10000 ms.',
  ),
  INITLESS_REQUEST_TIMEOUT: envDuration('120s').describe(
    'A request must arrive whole, body included, within this, in ms (at least the headers timeout); ' +
      '408 after. Default 120s = 120000 ms.',
  ),
  INITLESS_MAX_CONNECTIONS_PER_CLIENT: envInt(256, 0, 1_000_000).describe(
    'Connections one source address may hold open at once (count; 0: no cap); 429 beyond. Behind a ' +
      'proxy every client shares its address: raise it or set 0. Default 256.',
  ),
  INITLESS_ADMIN_TOKEN: z
    .string()
    .min(16, 'expected at least 16 characters')
    .optional()
    .describe('Bearer token for /admin, at least 16 characters. Default unset: /admin answers 404.'),
  INITLESS_TRUST_PROXY: envBool(false).describe(
    'Behind a trusted proxy: append to its X-Forwarded-For and keep its X-Forwarded-Proto/Host ' +
      '(otherwise they are replaced). Default false.',
  ),
  INITLESS_SHUTDOWN_TIMEOUT: envDuration('10s').describe(
    'How long shutdown waits for in-flight requests before closing them, in ms. Default 10s = 10000 ms.',
  ),
  INITLESS_REGISTRY_REFRESH: envDuration('5s').describe(
    'Interval of the full registry re-read that repairs missed events, in ms. Default 5s = 5000 ms.',
  ),
  INITLESS_RESTORE_RETRIES: envInt(2, 0, 10).describe(
    'Failed restores a waiting request sits through before it fails too (count). Default 2.',
  ),
  INITLESS_REDIS_TIMEOUT: envDuration('2s').describe(
    'An enqueue of a restore not acknowledged by Redis within this fails the cold start (503), in ms. ' +
      'Default 2s = 2000 ms.',
  ),
  INITLESS_MAX_CONTEXT: envBytes('64Mi').describe(
    'Largest build context a deploy may upload (tar, gzip accepted; unpacked size too), in bytes. ' +
      'Default 64Mi = 67108864 bytes.',
  ),
  INITLESS_DEPLOY_TIMEOUT: envDuration('15m').describe(
    'How long a deploy request waits for its build and bake, in ms. Default 15m = 900000 ms.',
  ),
  INITLESS_RETRY_AFTER: envDuration('1s').describe(
    'Retry-After of 503 no-capacity answers, in ms (sent rounded up to seconds). Default 1s = 1000 ms.',
  ),
  INITLESS_SUBNET: z
    .string()
    .regex(/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/, 'expected an IPv4 CIDR')
    .default('10.213.0.0/16')
    .describe(
      'The instance subnet: callbacks never reach it unless INITLESS_CALLBACK_ALLOW lists it. Default 10.213.0.0/16.',
    ),
  INITLESS_ASYNC_REDIS_URL: z
    .string()
    .url()
    .optional()
    .describe(
      'Redis for asynchronous invocations (give it appendfsync always). Default: INITLESS_REDIS_URL; ' +
        '`initless up`, `initless service install` and compose set the provisioned queue Redis.',
    ),
  INITLESS_ASYNC_PREFIX: z
    .string()
    .regex(/^\{[A-Za-z0-9_-]{1,62}\}$/, 'expected a Redis Cluster hash tag like {initless}')
    .default('{initless}')
    .describe('BullMQ key prefix of the invocation and callback queues, hash-tagged. Default {initless}.'),
  INITLESS_ASYNC_WORKER: envBool(true).describe(
    'Run asynchronous invocations in this gateway (false: it only accepts them). Default true.',
  ),
  INITLESS_ASYNC_LOCK: envDuration('15s').describe(
    "A running invocation's lock, renewed every half of it; a dead gateway's invocations run again " +
      'after it expires, in ms. Default 15s = 15000 ms.',
  ),
  INITLESS_ASYNC_STALLED_INTERVAL: envDuration('5s').describe(
    'How often workers look for invocations whose lock expired, in ms. Default 5s = 5000 ms.',
  ),
  INITLESS_ASYNC_MAX_STALLED: envInt(2, 0, 100).describe(
    'Times an invocation is handed back after its gateway died before it ends dead (count). Default 2.',
  ),
  INITLESS_ASYNC_DEAD_TTL: envDuration('168h').describe(
    'How long dead invocations are kept for redrive, in ms. Default 168h = 604800000 ms.',
  ),
  INITLESS_CALLBACK_ALLOW: z
    .string()
    .default('')
    .transform((v, ctx) => {
      const entries = v
        .split(',')
        .map((e) => e.trim())
        .filter(Boolean)
      try {
        addressList(entries)
      } catch (err) {
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          message: err instanceof Error ? err.message : String(err),
        })
        return z.NEVER
      }
      return entries
    })
    .describe(
      'Addresses and CIDRs callbacks may reach, comma-separated. Empty: any address but loopback, ' +
        'link-local, multicast and the instance subnet.',
    ),
  INITLESS_CALLBACK_TIMEOUT: envDuration('10s').describe(
    'A callback not answered within this is retried, in ms. Default 10s = 10000 ms.',
  ),
  INITLESS_CALLBACK_RETRIES: envInt(5, 0, 50).describe('Retries of a failed callback (count). Default 5.'),
  INITLESS_CALLBACK_BACKOFF: envDuration('1s').describe(
    'Delay before the first callback retry, doubling after each, in ms. Default 1s = 1000 ms.',
  ),
})

export type GatewayConfig = z.infer<typeof gatewayEnvSchema>

/** Load and freeze the gateway configuration from `env` (a plain object in tests). */
export function loadGatewayConfig(env: Record<string, string | undefined>): GatewayConfig {
  return parseEnv(gatewayEnvSchema, env)
}
