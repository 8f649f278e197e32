/**
 * Deploy, rollback and delete, as the admin API runs them. A deploy validates the uploaded build
 * context and its manifest here (nothing is stored for an invalid one), then either:
 * - finds the same version active: a no-op that says so, or a live update of the manifest's live
 *   fields (scaling, timeouts, description) without a build or a bake;
 * - finds the version kept and ready: activates it (as a rollback does);
 * - or stores the context and a `pending` version and waits for an executor's deploy job (build,
 *   bake, record, activate: executor/functions/deployer.ts).
 * The active version serves throughout; a failure names its step.
 */
import { randomUUID } from 'node:crypto'
import type { DeployQueue, DeployResult, DeployStatus } from '../shared/deploy-queue.ts'
import { InitlessError } from '../shared/errors.ts'
import { activeVersion, type FunctionRegistry, type FunctionVersion } from '../shared/function-registry.ts'
import { manifestsDiffer, readContext } from '../shared/versions.ts'

export interface RollbackResult {
  readonly fn: string
  readonly version: string
  readonly previous: string | null
  readonly ms: number
}

export interface DeploysDeps {
  readonly functions: Pick<
    FunctionRegistry,
    'get' | 'putVersion' | 'activate' | 'saveContext' | 'remove' | 'lock' | 'unlock'
  >
  readonly queue: DeployQueue
  readonly maxContextBytes: number
  readonly deployTimeoutMs: number
  readonly now?: () => number
}

export interface Deploys {
  deploy(fn: string, context: Buffer, traceId?: string): Promise<DeployResult>
  /** Activate `version`, or the newest ready version older than the active one. */
  rollback(fn: string, version?: string): Promise<RollbackResult>
  /** False when there was no such function. */
  remove(fn: string): Promise<boolean>
}

const notFound = (fn: string) => new InitlessError('ERR_FUNCTION_NOT_FOUND', `no function named ${fn}`)

/** A change lock outlives the deploy job's own deadline by this, in ms. */
const LOCK_MARGIN_MS = 30_000

export function createDeploys(deps: DeploysDeps): Deploys {
  const now = deps.now ?? Date.now

  /**
   * Deploys and rollbacks of one function run one at a time across gateways: two running at once
   * would activate in whichever order they finished, not the order they were asked for. A second
   * one is refused (409) rather than queued: its caller decides whether it still wants it.
   */
  const exclusively = async <T>(fn: string, what: string, change: () => Promise<T>): Promise<T> => {
    const token = randomUUID()
    const holder = `${what}, since ${new Date(now()).toISOString()} [${token}]`
    const busy = await deps.functions.lock(fn, holder, deps.deployTimeoutMs + LOCK_MARGIN_MS)
    if (busy !== undefined)
      throw new InitlessError(
        'ERR_CHANGE_IN_PROGRESS',
        `${fn}: another change is running: ${busy.replace(/ \[[0-9a-f-]+\]$/, '')}`,
        { details: { retryAfterS: 5 } },
      )
    try {
      return await change()
    } finally {
      await deps.functions.unlock(fn, holder).catch(() => undefined)
    }
  }

  const activate = async (fn: string, v: FunctionVersion) => {
    if (!(await deps.functions.activate(fn, v.version)))
      throw new InitlessError(
        'ERR_VERSION_NOT_FOUND',
        `${fn}: version ${v.version} is no longer kept or not ready`,
      )
  }

  const deploy = async (
    fn: string,
    context: Buffer,
    traceId: string,
    started: number,
    { manifest, version }: ReturnType<typeof readContext>,
  ): Promise<DeployResult> => {
    const record = await deps.functions.get(fn)
    const previous = record?.active ?? null
    const kept = record?.versions.find((v) => v.version === version)
    const result = (status: DeployStatus, extra: Partial<DeployResult> = {}): DeployResult => ({
      fn,
      version,
      status,
      previous,
      built: false,
      baked: false,
      ms: now() - started,
      ...extra,
    })
    if (kept?.state === 'ready') {
      const isLive = manifestsDiffer(kept.manifest, manifest)
      if (isLive) await deps.functions.putVersion(fn, { ...kept, manifest })
      if (previous === version) return result(isLive ? 'updated' : 'unchanged')
      await activate(fn, kept)
      return result('activated')
    }
    await deps.functions.saveContext(fn, version, context)
    await deps.functions.putVersion(fn, {
      version,
      manifest,
      state: 'pending',
      createdAt: now(),
      contextBytes: context.length,
      bakedOn: {},
    })
    const job = await deps.queue.deploy({ fn, version, traceId }, deps.deployTimeoutMs)
    return result('deployed', {
      built: job.built,
      baked: job.baked,
      buildMs: job.buildMs,
      bakeMs: job.bakeMs,
      removed: job.removed,
    })
  }

  const rollback = async (fn: string, version: string | undefined): Promise<RollbackResult> => {
    const started = now()
    const record = await deps.functions.get(fn)
    if (!record) throw notFound(fn)
    const current = activeVersion(record)
    let target: FunctionVersion | undefined
    if (version !== undefined) target = record.versions.find((v) => v.version === version)
    else {
      // Versions are newest first: the first ready one created before the active one.
      const older = current ? record.versions.filter((v) => v.createdAt < current.createdAt) : record.versions
      target = older.find((v) => v.state === 'ready' && v.version !== current?.version)
    }
    if (!target || target.state !== 'ready')
      throw new InitlessError(
        'ERR_VERSION_NOT_FOUND',
        version === undefined
          ? `${fn} keeps no ready version older than the active one to roll back to`
          : `${fn} keeps no ready version ${version} (kept: ${record.versions.map((v) => `${v.version} ${v.state}`).join(', ') || 'none'})`,
      )
    await activate(fn, target)
    return { fn, version: target.version, previous: record.active ?? null, ms: now() - started }
  }

  return {
    deploy: async (fn, context, traceId = randomUUID()) => {
      const started = now()
      // Unpacking and validating an upload needs no lock: an invalid one is refused as such even
      // while another change of the function runs, and never holds the lock up.
      const read = readContext(fn, context, deps.maxContextBytes)
      return exclusively(fn, 'a deploy', () => deploy(fn, context, traceId, started, read))
    },
    rollback: (fn, version) =>
      exclusively(fn, version === undefined ? 'a rollback' : `a rollback to ${version}`, () =>
        rollback(fn, version),
      ),
    remove: (fn) => deps.functions.remove(fn),
  }
}
