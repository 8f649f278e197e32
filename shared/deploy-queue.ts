/**
 * The deploy queue: the gateway's admin API hands a new function version (its build context is in
 * the function registry already) to an executor, which builds, bakes, records and activates it
 * (executor/functions/deployer.ts). One job per deploy; its failure names the step that failed.
 */
import type { DeployFailure, DeployStep } from './function-registry.ts'
import { InitlessError } from './errors.ts'

/** The deploy queue's name: the restore queue's with this suffix (gateways and executors agree). */
export const DEPLOY_QUEUE_SUFFIX = '-deploy'

export interface DeployJobData {
  readonly fn: string
  readonly version: string
  readonly traceId: string
}

export interface DeployJobResult {
  readonly fn: string
  readonly version: string
  /** The executor that built and baked it. */
  readonly hostId: string
  readonly image: string
  /** The image's reference by digest in INITLESS_IMAGE_REGISTRY, when it was pushed there. */
  readonly digest?: string
  readonly built: boolean
  readonly baked: boolean
  readonly buildMs: number
  readonly bakeMs: number
  /** Versions dropped by the retention setting. */
  readonly removed: readonly string[]
}

/** What a deploy did, as the admin API answers it (gateway/deploys.ts) and the CLI prints it. */
export type DeployStatus = 'unchanged' | 'updated' | 'activated' | 'deployed'

export interface DeployResult {
  readonly fn: string
  readonly version: string
  /**
   * `unchanged`: the active version already is this content; `updated`: live fields applied;
   * `activated`: a kept version made active again; `deployed`: built, baked and activated.
   */
  readonly status: DeployStatus
  readonly previous: string | null
  readonly built: boolean
  readonly baked: boolean
  readonly ms: number
  readonly buildMs?: number
  readonly bakeMs?: number
  readonly removed?: readonly string[]
}

export interface DeployQueue {
  /** Run the deploy job; rejects with ERR_DEPLOY_FAILED (the step in details.problem). */
  deploy(job: DeployJobData, timeoutMs: number): Promise<DeployJobResult>
}

const FAILURE_TAG = 'initless-deploy-failure'

export function encodeDeployFailure(failure: DeployFailure): string {
  return JSON.stringify({ [FAILURE_TAG]: 1, ...failure })
}

/** The failure a failed job's reason carries; BullMQ's own reasons become an `activate`-less build step. */
export function decodeDeployFailure(reason: string): DeployFailure {
  try {
    const v = JSON.parse(reason) as Record<string, unknown>
    if (v?.[FAILURE_TAG] === 1 && typeof v.step === 'string' && typeof v.message === 'string')
      return {
        step: v.step as DeployStep,
        code: typeof v.code === 'string' ? v.code : 'ERR_INTERNAL',
        message: v.message,
        ...(typeof v.output === 'string' ? { output: v.output } : {}),
      }
  } catch {
    // not an envelope
  }
  return { step: 'build', code: 'ERR_INTERNAL', message: reason }
}

/** A deploy failure as the admin API answers it (422, problem+json with step, cause and output). */
export function deployFailed(fn: string, version: string | undefined, failure: DeployFailure): InitlessError {
  return new InitlessError(
    'ERR_DEPLOY_FAILED',
    `deploy of ${fn} failed at step ${failure.step}: ${failure.message}`,
    {
      details: {
        problem: {
          fn,
          ...(version ? { version } : {}),
          step: failure.step,
          cause: failure.code,
          ...(failure.output ? { output: failure.output } : {}),
        },
      },
    },
  )
}
