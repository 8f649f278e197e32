/** Two gateways on one Redis share instances and, together, respect maxInstances. */
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { testManifest, type Echo } from '../gateway/test-support.ts'
import { createRedis } from '../shared/redis.ts'
import {
  cleanUp,
  isolation,
  REDIS_URL,
  redisSkipReason,
  startFakeExecutor,
  startGateway,
  type FakeExecutor,
  type RunningGateway,
} from './gateway-harness.ts'

const skip = await redisSkipReason()

describe('two gateways on one Redis', { skip }, () => {
  const iso = isolation()
  const redis = createRedis(REDIS_URL, { name: 'test-cleanup' })
  const manifests = [
    testManifest('shared', { concurrency: 10, maxInstances: 3 }),
    testManifest('pair', { concurrency: 5, maxInstances: 2 }),
  ]
  let executor: FakeExecutor
  let a: RunningGateway
  let b: RunningGateway

  before(async () => {
    executor = startFakeExecutor(iso, { restoreMs: 200 })
    a = await startGateway(iso, manifests)
    b = await startGateway(iso, manifests)
  })
  after(async () => {
    await a?.close()
    await b?.close()
    await executor?.close()
    await cleanUp(redis, iso)
    redis.disconnect()
  })

  test('an instance restored for one gateway serves the other warm', async () => {
    const cold = await fetch(`${a.url}/fn/shared/`)
    assert.match(cold.headers.get('server-timing') ?? '', /^cold/)
    const first = ((await cold.json()) as Echo).label
    const warm = await fetch(`${b.url}/fn/shared/`)
    assert.match(warm.headers.get('server-timing') ?? '', /^warm/)
    assert.equal(((await warm.json()) as Echo).label, first)
    assert.equal(executor.jobs.filter((j) => j.fn === 'shared').length, 1)
  })

  test('a burst on both gateways never starts more than maxInstances', async () => {
    const urls = [a.url, b.url]
    const responses = await Promise.all(
      Array.from({ length: 30 }, (_, i) => fetch(`${urls[i % 2]}/fn/pair/slow?ms=200`)),
    )
    assert.deepEqual(
      responses.map((r) => r.status),
      Array(30).fill(200),
    )
    const labels = new Set(await Promise.all(responses.map(async (r) => ((await r.json()) as Echo).label)))
    assert.equal(executor.jobs.filter((j) => j.fn === 'pair').length, 2)
    assert.equal(labels.size, 2)
    assert.equal((await a.registry.list('pair')).length, 2)
  })
})
