/**
 * The deploy worker: the executor's side of the BullMQ deploy queue (shared/deploy-queue.ts). One
 * deploy at a time per executor (builds and bakes use the whole machine). A failed deploy is never
 * retried: the failure (step, cause, output) goes back to the waiting admin request.
 */
import { UnrecoverableError, Worker, type Job } from 'bullmq'
import type { Logger } from 'pino'
import { encodeDeployFailure, type DeployJobData, type DeployJobResult } from '../../shared/deploy-queue.ts'
import { errorMessage, isInitlessError } from '../../shared/errors.ts'
import { createRedis } from '../../shared/redis.ts'
import { DeployStepError } from './deployer.ts'

export interface DeployWorker {
  close(force?: boolean): Promise<void>
}

export function createDeployWorker(deps: {
  readonly redisUrl: string
  readonly queueName: string
  readonly deploy: (job: DeployJobData) => Promise<DeployJobResult>
  readonly logger: Logger
}): DeployWorker {
  const log = deps.logger.child({ module: 'deploy-worker' })
  const connection = createRedis(deps.redisUrl, { blocking: true, name: 'initless-executor-deploy' })
  const worker = new Worker<DeployJobData, DeployJobResult>(
    deps.queueName,
    async (job: Job<DeployJobData, DeployJobResult>) => {
      try {
        return await deps.deploy(job.data)
      } catch (err) {
        const failure =
          err instanceof DeployStepError
            ? err.failure
            : {
                step: 'build' as const,
                code: isInitlessError(err) ? err.code : 'ERR_INTERNAL',
                message: errorMessage(err),
              }
        throw new UnrecoverableError(encodeDeployFailure(failure))
      }
    },
    { connection, concurrency: 1, autorun: true },
  )
  worker.on('error', (err) => log.warn({ err: err.message }, 'deploy worker connection error'))
  let closing: Promise<void> | undefined
  return {
    close(force = false) {
      closing ??= worker.close(force).finally(() => connection.disconnect())
      return closing
    },
  }
}
