/**
 * The function manifest (`functions/<name>/function.yaml`): schema, defaults and parsing.
 * Every field and its default is documented in docs/functions.md; keep the two in step.
 */
import { createHash } from 'node:crypto'
import { parse as parseYaml, YAMLParseError } from 'yaml'
import { z } from 'zod'
import { InitlessError } from './errors.ts'
import { seccompSetting } from './seccomp.ts'
import { MAX_SECRETS_PER_FUNCTION, SECRET_REF_RE, parseSecretRef } from './secrets.ts'
import { parseBytes, parseDurationMs } from './units.ts'

export const MANIFEST_FILE = 'function.yaml'

/** DNS-label style: what may appear in `/fn/<name>/`, an image tag and a container id. */
export const FUNCTION_NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/

const duration = (what: string) =>
  z.union([z.string(), z.number()]).transform((v, ctx) => {
    const ms = parseDurationMs(v)
    if (ms === undefined) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: `expected a ${what} like 500ms, 30s or 5m` })
      return z.NEVER
    }
    return ms
  })

const bytes = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const n = parseBytes(v)
  if (n === undefined || n < 4 * 1024 * 1024) {
    ctx.addIssue({
      code: z.ZodIssueCode.custom,
      message: 'expected a size of at least 4Mi, like 256Mi or 2Gi',
    })
    return z.NEVER
  }
  return n
})

/** A size that may be small (request and result bodies): at least 0, at most 64Mi. */
const bodySize = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const n = parseBytes(v)
  if (n === undefined || n > 64 * 1024 * 1024) {
    ctx.addIssue({
      code: z.ZodIssueCode.custom,
      message: 'expected a size of at most 64Mi, like 256Ki or 1Mi',
    })
    return z.NEVER
  }
  return n
})

const httpPath = z.string().regex(/^\/[^\s]*$/, 'expected a path starting with / and without spaces')

/** What an instance may reach outside its host (docs/security.md, executor/adapters/firewall.ts). */
export const EGRESS_POLICIES = ['allow', 'deny'] as const
export type Egress = (typeof EGRESS_POLICIES)[number]

/** Who may invoke a function (docs/security.md): anyone, or holders of one of its keys. */
export const AUTH_TYPES = ['none', 'key'] as const
export type AuthType = (typeof AUTH_TYPES)[number]

/** Requests per second of a rate limit: at least one an hour, at most a million a second. */
const rate = z
  .number()
  .min(1 / 3600)
  .max(1_000_000)

export const RESTORE_POLICIES = ['auto', 'lazy', 'eager', 'boot'] as const
export type RestorePolicy = (typeof RESTORE_POLICIES)[number]

/**
 * Signals a function may ask for before its checkpoint (restore.checkpointSignal): ones a process
 * can catch and that have no other meaning to the bake. An unhandled one is harmless: the
 * function's process is its sandbox's PID 1, which the kernel shields from default actions.
 */
export const CHECKPOINT_SIGNALS = ['SIGHUP', 'SIGUSR1', 'SIGUSR2', 'SIGWINCH', 'SIGURG'] as const

const warmupStep = z
  .object({
    path: httpPath,
    method: z.enum(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE']).default('GET'),
    count: z.number().int().min(1).max(100_000).default(1),
    body: z.string().optional(),
    headers: z.record(z.string()).default({}),
    /** A warm-up request must answer with this status class to count as done. */
    expectStatus: z.number().int().min(100).max(599).optional(),
  })
  .strict()

export const manifestSchema = z
  .object({
    name: z
      .string()
      .regex(FUNCTION_NAME_RE, 'expected a DNS label: lowercase letters, digits and -, at most 63'),
    description: z.string().max(500).optional(),
    port: z.number().int().min(1).max(65535),
    command: z.array(z.string().min(1)).min(1).optional(),
    workdir: z.string().regex(/^\//, 'expected an absolute path').optional(),
    env: z
      .record(
        z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected an environment variable name'),
        z.union([z.string(), z.number(), z.boolean()]).transform(String),
      )
      .default({}),
    build: z
      .object({
        dockerfile: z.string().min(1).default('Dockerfile'),
        args: z.record(z.string()).default({}),
      })
      .strict()
      .default({}),
    readiness: z
      .object({
        path: httpPath.default('/'),
        expect: z.string().default(''),
        timeout: duration('duration').default('60s'),
        interval: duration('duration').default('50ms'),
      })
      .strict()
      .default({}),
    warmup: z.array(warmupStep).max(50).default([]),
    resources: z
      .object({
        memory: bytes.default('512Mi'),
        cpus: z.number().positive().max(64).default(1),
        pids: z.number().int().min(16).max(1_000_000).default(4096),
        /**
         * Size limit of the instance's writable layer (the overlay's upper dir, a tmpfs of this size:
         * docs/sandbox.md#writable-layer). Its pages count against `memory` too.
         */
        disk: bytes.default('256Mi'),
      })
      .strict()
      .default({}),
    scaling: z
      .object({
        concurrency: z.number().int().min(1).max(10_000).default(50),
        maxInstances: z.number().int().min(1).max(1000).default(5),
        minInstances: z.number().int().min(0).max(1000).default(0),
        idleTimeout: duration('duration').default('5m'),
        poolSize: z.number().int().min(0).max(100).default(0),
        /**
         * Instances restored ahead of demand and held frozen (cgroup freezer) while the function is
         * deployed; a request thaws one and another is restored in its place.
         */
        standby: z.number().int().min(0).max(100).default(0),
        queueLimit: z.number().int().min(0).max(100_000).default(1000),
      })
      .strict()
      .default({}),
    restore: z
      .object({
        policy: z.enum(RESTORE_POLICIES).default('auto'),
        /**
         * Sent to the function's process once warm-up is done, before the checkpoint: its chance
         * to drop what a restore should not start with (collect garbage, close pooled connections).
         */
        checkpointSignal: z.enum(CHECKPOINT_SIGNALS).optional(),
      })
      .strict()
      .default({}),
    security: z
      .object({
        /**
         * The system-call filter: `default` (executor/sandbox/seccomp-profile.ts), `unconfined`, or a
         * profile file in the function's folder (shared/seccomp.ts).
         */
        seccomp: seccompSetting.default('default'),
      })
      .strict()
      .default({}),
    /**
     * Secrets mounted as files under /run/secrets at restore (`name`: the function's own scope,
     * `scope/name`: a shared one). Only whether the list is empty is baked (the mount); the values
     * never are. An empty list is left out, so the manifest's hash is what it was without it.
     */
    secrets: z
      .array(
        z
          .string()
          .regex(
            SECRET_REF_RE,
            'expected a secret name (letters, digits, _ . -) or scope/name, as `initless secrets set` takes them',
          ),
      )
      .max(MAX_SECRETS_PER_FUNCTION)
      .optional()
      .transform((list) => (list?.length ? list : undefined)),
    async: z
      .object({
        /** Asynchronous invocations one gateway runs at once (the rest wait in the queue). */
        concurrency: z.number().int().min(1).max(1000).default(8),
        /** Attempts after the first one that failed with a retryable outcome. */
        retries: z.number().int().min(0).max(20).default(3),
        /** Delay before the first retry; it doubles for each further one (with jitter). */
        backoff: duration('duration').default('1s'),
        /** Largest request body accepted for an asynchronous invocation. */
        maxBody: bodySize.default('1Mi'),
        /** Largest response body kept as the result (longer ones are cut and marked truncated). */
        maxResult: bodySize.default('256Ki'),
        /** How long a finished invocation (and its idempotency key) is kept. */
        resultTTL: duration('duration').default('24h'),
        /** Invocations that may wait (queued or between attempts); beyond: 503. */
        queueLimit: z.number().int().min(1).max(10_000_000).default(100_000),
      })
      .strict()
      .default({}),
    network: z
      .object({
        /** allow: the internet, as from a Docker container; deny: nothing outside its namespace. */
        egress: z.enum(EGRESS_POLICIES).default('allow'),
      })
      .strict()
      .default({}),
    auth: z
      .object({
        /** key: requests need one of the function's keys (`initless keys create`); none: open. */
        type: z.enum(AUTH_TYPES).default('none'),
      })
      .strict()
      .default({}),
    /** Absent: no limit. Requests per second over all gateways (gateway/access/rate-limiter.ts). */
    rateLimit: z
      .object({
        perFunction: rate.optional(),
        /** Per key id when auth.type is key, else per source address. */
        perClient: rate.optional(),
        /** Requests a full bucket allows at once. Default: one second's worth (at least 1). */
        burst: z.number().int().min(1).max(1_000_000).optional(),
      })
      .strict()
      .refine((r) => r.perFunction !== undefined || r.perClient !== undefined, {
        message: 'expected perFunction, perClient or both',
      })
      .optional(),
    timeouts: z
      .object({
        /** How long a request may wait for an instance (cold start included). */
        start: duration('duration').default('30s'),
        /** How long the function may take to answer once proxied. */
        request: duration('duration').default('60s'),
      })
      .strict()
      .default({}),
  })
  .strict()
  .superRefine((m, ctx) => {
    if (m.scaling.standby > m.scaling.maxInstances) {
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        path: ['scaling', 'standby'],
        message: `must not exceed scaling.maxInstances (${m.scaling.maxInstances})`,
      })
    }
    const files = new Set<string>()
    for (const [i, entry] of (m.secrets ?? []).entries()) {
      const { name } = parseSecretRef(m.name, entry)
      if (files.has(name))
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          path: ['secrets', i],
          message: `a second secret named '${name}': each becomes /run/secrets/${name}`,
        })
      files.add(name)
    }
    if (m.scaling.minInstances > m.scaling.maxInstances) {
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        path: ['scaling', 'minInstances'],
        message: `must not exceed scaling.maxInstances (${m.scaling.maxInstances})`,
      })
    }
  })

export type Manifest = z.infer<typeof manifestSchema>
export type WarmupStep = Manifest['warmup'][number]

export interface ManifestProblem {
  /** Dotted path of the field, or '(file)' for problems with the file as a whole. */
  readonly field: string
  readonly message: string
}

function describe(issue: z.ZodIssue): ManifestProblem {
  const field = issue.path.length ? issue.path.join('.') : '(manifest)'
  switch (issue.code) {
    case z.ZodIssueCode.unrecognized_keys:
      return { field, message: `unknown field(s) ${issue.keys.map((k) => `'${k}'`).join(', ')}` }
    case z.ZodIssueCode.invalid_type:
      return {
        field,
        message:
          issue.received === 'undefined'
            ? `is required (${issue.expected})`
            : `expected ${issue.expected}, got ${issue.received}`,
      }
    default:
      return { field, message: issue.message }
  }
}

/**
 * Parse and validate a manifest's text. `file` names it in errors; `dirName` is the folder the
 * manifest lives in, which is the function's name when `name` is left out and must match otherwise.
 * Throws ERR_MANIFEST_INVALID listing every problem at once.
 */
export function parseManifest(text: string, file: string, dirName?: string): Manifest {
  let raw: unknown
  try {
    raw = parseYaml(text, { prettyErrors: true, uniqueKeys: true })
  } catch (err) {
    const msg = err instanceof YAMLParseError ? err.message.split('\n')[0] : String(err)
    throw manifestError(file, [{ field: '(file)', message: `not valid YAML: ${msg}` }])
  }
  if (raw === null || raw === undefined) raw = {}
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    throw manifestError(file, [{ field: '(file)', message: 'expected a YAML mapping at the top level' }])
  }
  const obj = { ...(raw as Record<string, unknown>) }
  if (obj.name === undefined && dirName !== undefined) obj.name = dirName
  const result = manifestSchema.safeParse(obj)
  const problems = result.success ? [] : result.error.issues.map(describe)
  if (result.success && dirName !== undefined && result.data.name !== dirName) {
    problems.push({ field: 'name', message: `'${result.data.name}' must match its folder name '${dirName}'` })
  }
  if (!result.success || problems.length) throw manifestError(file, problems)
  return deepFreeze(result.data)
}

function manifestError(file: string, problems: ManifestProblem[]): InitlessError {
  const lines = problems.map((p) => `  ${p.field}: ${p.message}`).join('\n')
  return new InitlessError('ERR_MANIFEST_INVALID', `${file}: invalid manifest\n${lines}`, {
    details: { file, problems },
  })
}

/**
 * A stable hash of a validated manifest, or of its baked fields (shared/versions.ts): part of
 * every snapshot's identity. The `async`, `network`, `auth` and `rateLimit` sections are left out:
 * they govern the gateway and the host's firewall, not what is baked, and leaving them out keeps
 * the hash of a manifest without them what it was before they existed (no re-bake).
 */
export function manifestHash(m: object): string {
  const {
    async: _async,
    network: _network,
    auth: _auth,
    rateLimit: _rateLimit,
    ...baked
  } = m as { async?: unknown; network?: unknown; auth?: unknown; rateLimit?: unknown }
  return createHash('sha256').update(canonicalJson(baked)).digest('hex')
}

export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`
  }
  return JSON.stringify(value)
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v)
    Object.freeze(value)
  }
  return value
}
