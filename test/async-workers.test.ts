/**
 * The worker role's cluster-wide cap, against the real Redis: two gateways' workers consume one
 * function's queue and together never run more than `async.concurrency` attempts at once.
 */
import assert from 'node:assert/strict'
import { randomBytes, randomUUID } from 'node:crypto'
import { after, test } from 'node:test'
import { createBullmqInvocations } from '../gateway/async/bullmq-invocations.ts'
import { startAsyncWorkers, type AsyncWorkers } from '../gateway/async/bullmq-workers.ts'
import type { InvocationData } from '../gateway/async/invocation.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { manifestSchema } from '../shared/manifest.ts'
import { createRedis, deleteKeys } from '../shared/redis.ts'
import { REDIS_URL, requireServices } from './support/integration.ts'

const prefix = `{initless-test-${randomBytes(4).toString('hex')}}`
const logger = createSilentLogger()
const invocations = createBullmqInvocations({
  redisUrl: REDIS_URL,
  prefix,
  logger,
  timeoutMs: 5_000,
  deadTtlMs: 60_000,
  retryAfterMs: 1_000,
})
const workers: AsyncWorkers[] = []
after(async () => {
  await Promise.all(workers.map((w) => w.close(true)))
  await invocations.close()
  const redis = createRedis(REDIS_URL, { name: 'test-async-workers-cleanup' })
  await deleteKeys(redis, [`${prefix}:*`])
  redis.disconnect()
})

test('two gateways together run at most async.concurrency attempts of a function at once', async (t) => {
  if (!requireServices(t)) return
  const manifest = manifestSchema.parse({ name: 'capped', port: 8080, async: { concurrency: 2 } })
  const count = 24
  let running = 0
  let most = 0
  const served = new Set<string>()
  let allServed: () => void
  const done = new Promise<void>((resolve) => (allServed = resolve))
  const start = () =>
    startAsyncWorkers({
      redisUrl: REDIS_URL,
      prefix,
      logger,
      invocations,
      functions: [manifest],
      runAttempt: async (inv) => {
        running++
        most = Math.max(most, running)
        await new Promise((r) => setTimeout(r, 40))
        running--
        served.add(inv.id)
        if (served.size === count) allServed()
        const sentAt = Date.now()
        return {
          kind: 'response',
          sentAt,
          result: { status: 200, headers: {}, body: '', bodyBytes: 0, isTruncated: false },
        }
      },
      sendCallback: async () => undefined,
      events: { attempt: () => undefined, callbackFailed: () => undefined },
      lockMs: 30_000,
      stalledIntervalMs: 30_000,
      maxStalled: 1,
      callbackRetries: 0,
      callbackBackoffMs: 1_000,
      callbackTtlMs: 60_000,
    })
  workers.push(start(), start())
  for (let i = 0; i < count; i++) {
    const data: InvocationData = {
      id: `capped.${randomUUID()}`,
      fn: 'capped',
      request: { method: 'POST', path: '/', headers: {}, body: '' },
      acceptedAt: Date.now(),
      requestId: `r${i}`,
      requestHash: `h${i}`,
    }
    await invocations.accept(data, manifest)
  }
  await Promise.race([
    done,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${served.size} of ${count} ran`)), 30_000)),
  ])
  assert.equal(served.size, count)
  // Each worker alone may take 2: more than 2 at once means the cap was per gateway.
  assert.ok(most <= 2, `${most} attempts ran at once`)
  assert.equal(most, 2, 'the cap is reached (the two workers did share the work)')
})
