import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { after, test } from 'node:test'
import { Queue, QueueEvents, Worker } from 'bullmq'
import { createRedis, redisVersion } from '../shared/redis.ts'
import { REDIS_URL, requireServices } from './support/integration.ts'

test('redis: round trip and version', async (t) => {
  if (!requireServices(t)) return
  const redis = createRedis(REDIS_URL)
  after(() => redis.disconnect())
  const key = `test:${randomUUID()}`
  await redis.set(key, 'value', 'EX', 60)
  assert.equal(await redis.get(key), 'value')
  await redis.del(key)
  assert.equal(await redis.get(key), null)
  const v = await redisVersion(redis)
  assert.match(v, /^\d+\.\d+\.\d+/)
})

test('redis: a BullMQ job goes through a real queue and worker', async (t) => {
  if (!requireServices(t)) return
  const name = `test-${randomUUID()}`
  // BullMQ never closes connections it was handed: the test owns and closes all three.
  const connections = [1, 2, 3].map(() => createRedis(REDIS_URL, { blocking: true }))
  const [c1, c2, c3] = connections as [
    ReturnType<typeof createRedis>,
    ReturnType<typeof createRedis>,
    ReturnType<typeof createRedis>,
  ]
  const queue = new Queue(name, { connection: c1 })
  const events = new QueueEvents(name, { connection: c2 })
  const worker = new Worker(name, async (job) => ({ doubled: (job.data as { n: number }).n * 2 }), {
    connection: c3,
  })
  after(async () => {
    await worker.close()
    await events.close()
    await queue.obliterate({ force: true })
    await queue.close()
    for (const c of connections) c.disconnect()
  })
  await Promise.all([events.waitUntilReady(), worker.waitUntilReady()])
  const job = await queue.add('double', { n: 21 })
  const result = await job.waitUntilFinished(events, 10_000)
  assert.deepEqual(result, { doubled: 42 })
})
