/**
 * `/admin/functions/...` lifecycle routes (mounted by routes/admin.ts, behind its bearer token):
 * deploy from an uploaded build context, the function's record and versions, rollback, delete.
 * The shape follows OpenFaaS's /system/functions where it fits (a function per name, DELETE to
 * remove); a deploy uploads a tar of the function's folder instead of naming an image.
 */
import { Hono } from 'hono'
import { z } from 'zod'
import { InitlessError } from '../../shared/errors.ts'
import type { FunctionRegistry } from '../../shared/function-registry.ts'
import { FUNCTION_NAME_RE } from '../../shared/manifest.ts'
import type { Deploys } from '../deploys.ts'
import { bodyTooLarge } from '../forwarder.ts'
import type { GatewayEnv } from '../request-context.ts'
import { declaredSecrets, formatSecretRef, type SecretStore } from '../../shared/secrets.ts'

export interface LifecycleRouteDeps {
  readonly deploys: Deploys
  readonly functions: Pick<FunctionRegistry, 'get' | 'list'>
  readonly maxContextBytes: number
  /** Counts each outcome (metrics). */
  readonly onOutcome?: (fn: string, outcome: string) => void
  /**
   * Bring this gateway's view of a function up to date after a change made here, so that a
   * request sent after the answer sees it (other gateways follow within their event delivery).
   */
  readonly seen?: (fn: string) => Promise<void>
  /** Called once a function was deleted, before the answer (its invocation keys are revoked). */
  readonly onDeleted?: (fn: string) => Promise<void>
  /** Which declared secrets have no value: a deploy's answer names them (`missingSecrets`). */
  readonly secrets?: Pick<SecretStore, 'missing'>
}

/**
 * The secrets the deployed version declares that have no value yet: its instances would fail with
 * ERR_SECRET_MISSING until they are set. Empty when it cannot be told (the answer is a warning).
 */
async function missingSecrets(deps: LifecycleRouteDeps, fn: string, version: string): Promise<string[]> {
  if (!deps.secrets) return []
  try {
    const manifest = (await deps.functions.get(fn))?.versions.find((v) => v.version === version)?.manifest
    const refs = declaredSecrets(fn, manifest?.secrets)
    return (await deps.secrets.missing(refs)).map(formatSecretRef)
  } catch {
    return []
  }
}

const rollbackBody = z
  .object({
    version: z
      .string()
      .regex(/^[0-9a-f]{1,64}$/)
      .optional(),
  })
  .strict()

function nameOf(raw: string): string {
  if (!FUNCTION_NAME_RE.test(raw))
    throw new InitlessError(
      'ERR_FUNCTION_NAME_INVALID',
      `'${raw}' is not a function name (lowercase DNS label)`,
    )
  return raw
}

/** The request body, refused with 413 as soon as it passes `max` bytes. */
async function readBody(req: Request, max: number): Promise<Buffer> {
  const length = Number(req.headers.get('content-length') ?? '0')
  if (length > max) throw bodyTooLarge(max)
  const chunks: Buffer[] = []
  let size = 0
  if (!req.body) return Buffer.alloc(0)
  for await (const chunk of req.body as unknown as AsyncIterable<Uint8Array>) {
    size += chunk.length
    if (size > max) throw bodyTooLarge(max)
    chunks.push(Buffer.from(chunk))
  }
  return Buffer.concat(chunks)
}

export function createLifecycleRoutes(deps: LifecycleRouteDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>()

  // Deploy: the body is a tar (or tar.gz) of the function's folder, function.yaml at its top.
  app.put('/functions/:name', async (c) => {
    const name = nameOf(c.req.param('name'))
    const context = await readBody(c.req.raw, deps.maxContextBytes)
    if (!context.length)
      throw new InitlessError('ERR_DEPLOY_CONTEXT_INVALID', 'expected the build context (a tar) as the body')
    const log = c.get('log')
    log.info({ fn: name, bytes: context.length }, 'deploy requested')
    const result = await deps.deploys.deploy(name, context, c.get('requestId')).catch((err: unknown) => {
      const step = (err as { details?: { problem?: { step?: unknown } } }).details?.problem?.step
      deps.onOutcome?.(name, `failed:${typeof step === 'string' ? step : 'upload'}`)
      throw err
    })
    await deps.seen?.(name)
    deps.onOutcome?.(name, result.status)
    const missing = await missingSecrets(deps, name, result.version)
    log.info({ ...result, ...(missing.length ? { missingSecrets: missing } : {}) }, 'deploy done')
    return c.json(
      { ...result, ...(missing.length ? { missingSecrets: missing } : {}) },
      result.status === 'deployed' ? 201 : 200,
    )
  })

  // Every deployed function of the registry: active version, versions kept, hosts baked on.
  app.get('/deployments', async (c) => {
    const records = await deps.functions.list()
    return c.json({
      deployments: records.map((r) => ({
        fn: r.name,
        active: r.active ?? null,
        activatedAt: r.activatedAt ?? null,
        versions: r.versions.map((v) => ({
          version: v.version,
          state: v.state,
          isActive: v.version === r.active,
          hosts: Object.keys(v.bakedOn).sort(),
          ...(v.failure ? { failedStep: v.failure.step } : {}),
        })),
      })),
    })
  })

  app.get('/functions/:name/versions', async (c) => {
    const name = nameOf(c.req.param('name'))
    const record = await deps.functions.get(name)
    if (!record) throw new InitlessError('ERR_FUNCTION_NOT_FOUND', `no function named ${name}`)
    return c.json({
      fn: name,
      active: record.active ?? null,
      activatedAt: record.activatedAt ?? null,
      versions: record.versions.map((v) => ({
        version: v.version,
        state: v.state,
        isActive: v.version === record.active,
        createdAt: v.createdAt,
        image: v.image ?? null,
        bakedOn: v.bakedOn,
        contextBytes: v.contextBytes,
        ...(v.failure ? { failure: v.failure } : {}),
      })),
    })
  })

  app.post('/functions/:name/rollback', async (c) => {
    const name = nameOf(c.req.param('name'))
    const text = await c.req.text()
    let body: unknown
    try {
      body = text.trim() ? JSON.parse(text) : {}
    } catch {
      body = undefined
    }
    const parsed = rollbackBody.safeParse(body)
    if (!parsed.success)
      throw new InitlessError(
        'ERR_GATEWAY_BAD_REQUEST',
        'expected an empty body or {"version": "<version id>"}',
      )
    const result = await deps.deploys.rollback(name, parsed.data.version)
    await deps.seen?.(name)
    deps.onOutcome?.(name, 'rolled-back')
    c.get('log').info({ ...result }, 'rolled back')
    return c.json(result)
  })

  app.delete('/functions/:name', async (c) => {
    const name = nameOf(c.req.param('name'))
    if (!(await deps.deploys.remove(name)))
      throw new InitlessError('ERR_FUNCTION_NOT_FOUND', `no function named ${name}`)
    await deps.seen?.(name)
    await deps.onDeleted?.(name)
    deps.onOutcome?.(name, 'deleted')
    c.get('log').info({ fn: name }, 'function deleted')
    return c.json({ fn: name, deleted: true })
  })
  return app
}
