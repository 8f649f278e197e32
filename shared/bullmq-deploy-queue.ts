/**
 * BullMQ adapter for the DeployQueue port, the producer side (the gateway). The consumer is
 * executor/functions/deploy-worker.ts. A job's outcome is awaited through QueueEvents.
 */
import { randomBytes } from 'node:crypto'
import { Queue, QueueEvents } from 'bullmq'
import type { Logger } from 'pino'
import {
  decodeDeployFailure,
  deployFailed,
  type DeployJobData,
  type DeployJobResult,
  type DeployQueue,
} from './deploy-queue.ts'
import { errorMessage, InitlessError } from './errors.ts'

export interface BullmqDeployQueue extends DeployQueue {
  ready(): Promise<void>
  close(): Promise<void>
}

export function createBullmqDeployQueue(deps: {
  readonly redisUrl: string
  readonly queueName: string
  readonly logger: Logger
}): BullmqDeployQueue {
  const log = deps.logger.child({ module: 'deploy-queue' })
  const connection = {
    url: deps.redisUrl,
    retryStrategy: (times: number) => Math.min(50 * 2 ** Math.min(times, 6), 2000),
  }
  const queue = new Queue<DeployJobData, DeployJobResult>(deps.queueName, { connection })
  const events = new QueueEvents(deps.queueName, { connection })
  queue.on('error', (err) => log.debug({ err: err.message }, 'deploy queue connection error'))
  events.on('error', (err) => log.debug({ err: err.message }, 'deploy queue events connection error'))
  let closing: Promise<void> | undefined
  return {
    async deploy(data, timeoutMs) {
      const job = await queue.add('deploy', data, {
        jobId: `${data.fn}:${data.version}:${randomBytes(4).toString('hex')}`,
        // A build or a bake that failed fails the same way again: the deploy reports it instead.
        attempts: 1,
        removeOnComplete: { age: 3600, count: 100 },
        removeOnFail: { age: 24 * 3600, count: 100 },
      })
      try {
        return await job.waitUntilFinished(events, timeoutMs)
      } catch (err) {
        const message = errorMessage(err)
        // BullMQ's own wait timeout, as opposed to a failure reason the executor wrote.
        if (message.startsWith('Job wait '))
          throw new InitlessError(
            'ERR_GATEWAY_TIMEOUT',
            `deploy of ${data.fn} did not finish within ${timeoutMs} ms (it may still complete)`,
          )
        throw deployFailed(data.fn, data.version, decodeDeployFailure(message))
      }
    },
    async ready() {
      await Promise.all([queue.waitUntilReady(), events.waitUntilReady()])
    },
    close() {
      closing ??= Promise.allSettled([queue.close(), events.close()]).then(() => undefined)
      return closing
    },
  }
}
