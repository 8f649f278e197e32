/**
 * The asynchronous side of a gateway: the accept/read routes' dependencies and, unless turned off
 * (INITLESS_ASYNC_WORKER=false), the worker role.
 *
 * The worker role runs inside the gateway process, not in a process of its own: an attempt takes a
 * slot from the gateway's instance pool, whose in-flight counts are what holds an instance to
 * `scaling.concurrency`. A separate worker process would keep counts of its own and send an
 * instance up to twice its concurrency; inside the gateway, asynchronous and synchronous requests
 * share one count, and `async.concurrency` caps how many slots the backlog may hold.
 */
import type { Logger } from 'pino'
import type { FunctionCatalog } from '../catalog.ts'
import type { GatewayConfig } from '../config.ts'
import type { Forwarder } from '../forwarder.ts'
import type { InstancePool } from '../instance-pool.ts'
import type { GatewayMetrics } from '../metrics.ts'
import { createAttemptRunner } from './attempt.ts'
import type { BullmqInvocations } from './bullmq-invocations.ts'
import { startAsyncWorkers, type AsyncWorkers } from './bullmq-workers.ts'
import { createCallbackPolicy } from './callback-target.ts'
import { createCallbackSender } from './callback-sender.ts'
import { createAsyncMetrics } from './metrics.ts'
import type { AsyncRouteDeps } from './routes.ts'

export interface AsyncRole {
  readonly routes: Omit<AsyncRouteDeps, 'catalog' | 'maxBodyBytes' | 'trustProxy'>
  /** Absent when this gateway only accepts. */
  readonly workers?: AsyncWorkers
}

export function startAsyncRole(
  config: GatewayConfig,
  deps: {
    readonly invocations: BullmqInvocations
    readonly forwarder: Forwarder
    readonly redisUrl: string
    readonly catalog: FunctionCatalog
    readonly pool: Pick<InstancePool, 'acquire' | 'tryAcquire'>
    readonly logger: Logger
    readonly metrics: GatewayMetrics
  },
): AsyncRole {
  const { invocations, catalog } = deps
  const metrics = createAsyncMetrics({
    registry: deps.metrics.registry,
    stats: () => Promise.all(catalog.list().map((m) => invocations.stats(m.name))),
  })
  const policy = createCallbackPolicy({
    allow: config.INITLESS_CALLBACK_ALLOW,
    instanceSubnets: [config.INITLESS_SUBNET],
  })
  const workers = config.INITLESS_ASYNC_WORKER
    ? startAsyncWorkers({
        redisUrl: deps.redisUrl,
        prefix: config.INITLESS_ASYNC_PREFIX,
        logger: deps.logger,
        invocations,
        functions: catalog.list(),
        runAttempt: createAttemptRunner({ catalog, pool: deps.pool, forwarder: deps.forwarder }),
        sendCallback: createCallbackSender({ policy, timeoutMs: config.INITLESS_CALLBACK_TIMEOUT }),
        events: metrics,
        lockMs: config.INITLESS_ASYNC_LOCK,
        stalledIntervalMs: config.INITLESS_ASYNC_STALLED_INTERVAL,
        maxStalled: config.INITLESS_ASYNC_MAX_STALLED,
        callbackRetries: config.INITLESS_CALLBACK_RETRIES,
        callbackBackoffMs: config.INITLESS_CALLBACK_BACKOFF,
        callbackTtlMs: config.INITLESS_ASYNC_DEAD_TTL,
      })
    : undefined
  return {
    routes: {
      store: invocations,
      callbacks: policy,
      onAccepted: (fn, isDuplicate) => metrics.accepted(fn, isDuplicate),
    },
    ...(workers ? { workers } : {}),
  }
}
