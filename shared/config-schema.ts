/**
 * Shared pieces of configuration schemas. Each process has its own `loadConfig(env)` (gateway/config.ts,
 * executor/config.ts) built from these; only composition roots pass `process.env` in.
 */
import { z } from 'zod'
import { InitlessError } from './errors.ts'
import { parseBytes, parseDurationMs } from './units.ts'

export const envDuration = (def: string) =>
  z
    .string()
    .default(def)
    .transform((v, ctx) => {
      const ms = parseDurationMs(v)
      if (ms === undefined) {
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          message: `expected a duration like 500ms, 30s or 5m, got '${v}'`,
        })
        return z.NEVER
      }
      return ms
    })

export const envBytes = (def: string) =>
  z
    .string()
    .default(def)
    .transform((v, ctx) => {
      const n = parseBytes(v)
      if (n === undefined) {
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          message: `expected a size like 512Mi or 2Gi, got '${v}'`,
        })
        return z.NEVER
      }
      return n
    })

export const envInt = (def: number, min: number, max: number) =>
  z.coerce.number().int().min(min).max(max).default(def)

export const envBool = (def: boolean) =>
  z
    .enum(['true', 'false', '1', '0', 'yes', 'no', ''])
    .default(def ? 'true' : 'false')
    .transform((v) => v === 'true' || v === '1' || v === 'yes')

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/** Settings every process shares. */
export const commonEnvSchema = z.object({
  INITLESS_REDIS_URL: z.string().url().default('redis://127.0.0.1:6379'),
  INITLESS_STATE_DIR: z.string().regex(/^\//, 'expected an absolute path').default('/var/lib/initless'),
  INITLESS_FUNCTIONS_DIR: z.string().default('functions'),
  INITLESS_LOG_LEVEL: z.enum(LOG_LEVELS).default('info'),
  /** BullMQ queue the gateways enqueue restores on; gateways and executors must agree. */
  INITLESS_QUEUE_NAME: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,64}$/, 'expected letters, digits, _ and -')
    .default('initless-restore'),
  /** Prefix of every registry key and of the events channel (several installations on one Redis). */
  INITLESS_KEY_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9_:-]{1,64}$/, 'expected letters, digits, _ : and -')
    .default('initless'),
  /**
   * Key that seals secret values in Redis (shared/secret-crypto.ts): gateways encrypt with it,
   * executors decrypt. Unset: values are stored unencrypted.
   */
  INITLESS_SECRETS_KEY_FILE: z.string().regex(/^\//, 'expected an absolute path').optional(),
})

/**
 * Validate `env` against `schema`, listing every problem at once, and freeze the result.
 * Empty strings count as unset, so `FOO= cmd` falls back to the default.
 */
export function parseEnv<S extends z.ZodObject<z.ZodRawShape>>(
  schema: S,
  env: Record<string, string | undefined>,
): z.infer<S> {
  const picked: Record<string, string> = {}
  for (const key of Object.keys(schema.shape)) {
    const v = env[key]
    if (v !== undefined && v !== '') picked[key] = v
  }
  const result = schema.safeParse(picked)
  if (!result.success)
    throw configInvalid(result.error.issues.map((i) => ({ key: i.path.join('.'), message: i.message })))
  return Object.freeze(result.data)
}

/** ERR_CONFIG_INVALID listing every problem, one `  KEY: message` line each. */
export function configInvalid(problems: readonly { key: string; message: string }[]): InitlessError {
  const lines = problems.map((p) => `  ${p.key}: ${p.message}`)
  return new InitlessError('ERR_CONFIG_INVALID', `invalid configuration:\n${lines.join('\n')}`, {
    details: { problems: lines },
  })
}
