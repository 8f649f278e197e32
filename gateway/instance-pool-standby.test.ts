import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { createSilentLogger } from '../shared/logger.ts'
import { createFakeRegistry, type FakeRegistry } from '../shared/registry-fake.ts'
import { createFakeRestoreQueue } from '../shared/restore-queue-fake.ts'
import { createInstancePool, type InstancePool } from './instance-pool.ts'
import { createGatewayMetrics } from './metrics.ts'
import { TEST_PHASES, testManifest } from './test-support.ts'

const ADDRESS = { host: '10.213.0.9', port: 8080 }
const MiB = 1024 * 1024
const pools: InstancePool[] = []
after(() => Promise.all(pools.map((p) => p.close())))

async function setup(registry: FakeRegistry = createFakeRegistry()) {
  const queue = createFakeRestoreQueue()
  const pool = createInstancePool({ registry, queue, logger: createSilentLogger() })
  pools.push(pool)
  await pool.start()
  return { pool, queue, registry }
}

/** Act as an executor: reserve a standby instance of `fn` and record it frozen. */
async function frozenInstance(registry: FakeRegistry, fn: string, id: string, version?: string) {
  const limits = { standby: 5, maxInstances: 5, ...(version ? { version } : {}) }
  assert.equal(await registry.reserveStandby(fn, limits, id, 'h'), true)
  const info = { address: ADDRESS, runtime: 'lazy' as const, phases: TEST_PHASES, hostId: 'h' }
  assert.equal(await registry.markFrozen(fn, id, { ...info, memoryBytes: 30 * MiB }), true)
}

describe('instance pool: frozen standby instances', () => {
  test('a waiting request claims a frozen instance instead of starting a restore', async () => {
    const { pool, queue, registry } = await setup()
    const m = testManifest('sb')
    await frozenInstance(registry, 'sb', 'sb-1')
    const lease = await pool.acquire(m, { traceId: 'a' })
    assert.equal(lease.instanceId, 'sb-1')
    assert.deepEqual(lease.address, ADDRESS)
    assert.equal(lease.isThawed, true)
    assert.equal(lease.isCold, false, 'a thawed instance is never a cold start')
    assert.equal(lease.phases, undefined)
    assert.equal(queue.jobs.length, 0, 'no restore')
    const r = await registry.get('sb', 'sb-1')
    assert.equal(r?.state, 'ready')
    assert.equal(typeof r?.thawedAt, 'number')
    lease.release()
    // A second request on the thawed instance is warm.
    const warm = pool.tryAcquire(m)
    assert.equal(warm?.instanceId, 'sb-1')
    assert.equal(warm?.isThawed, false)
    warm?.release()
  })

  test('stats count frozen instances and the memory they hold', async () => {
    const { pool, registry } = await setup()
    await frozenInstance(registry, 'st', 'st-1')
    await frozenInstance(registry, 'st', 'st-2')
    // The pool learns of a function on its first request: one takes a standby, one stays frozen.
    const lease = await pool.acquire(testManifest('st'), { traceId: 'a' })
    const stats = pool.stats().find((s) => s.fn === 'st')
    assert.equal(stats?.frozen, 1)
    assert.equal(stats?.frozenMemoryBytes, 30 * MiB)
    const metrics = await createGatewayMetrics({ stats: () => pool.stats() }).registry.metrics()
    assert.match(metrics, /initless_gateway_instances\{function="st",state="frozen"\} 1/)
    assert.match(metrics, new RegExp(`initless_gateway_standby_memory_bytes\\{function="st"\\} ${30 * MiB}`))
    lease.release()
  })

  test('two gateways, one frozen instance: one claim wins, the other request shares the thawed one', async () => {
    const registry = createFakeRegistry()
    const a = await setup(registry)
    const b = await setup(registry)
    await frozenInstance(registry, 'race', 'race-1')
    const m = testManifest('race')
    const [la, lb] = await Promise.all([
      a.pool.acquire(m, { traceId: 'a' }),
      b.pool.acquire(m, { traceId: 'b' }),
    ])
    assert.equal(la.instanceId, 'race-1')
    assert.equal(lb.instanceId, 'race-1')
    const claims = registry.events.filter(
      (e) => e.type === 'instance' && e.id === 'race-1' && e.state === 'ready',
    )
    assert.equal(claims.length, 1, 'claimed (thawed) once')
    assert.equal(a.queue.jobs.length + b.queue.jobs.length, 0)
    la.release()
    lb.release()
  })

  test('a frozen instance of another version is never claimed: a restore starts', async () => {
    const { pool, queue, registry } = await setup()
    pool.setVersion('ver', 'v2')
    await frozenInstance(registry, 'ver', 'ver-old', 'v1')
    const waiting = pool.acquire(testManifest('ver'), { traceId: 'a' })
    const [job] = await queue.waitForJobs(1)
    assert.ok(job)
    assert.equal((await registry.get('ver', 'ver-old'))?.state, 'frozen')
    await registry.markReady('ver', job.instanceId, ADDRESS, 'lazy', TEST_PHASES, 'h', 'v2')
    queue.complete(job.instanceId)
    const lease = await waiting
    assert.equal(lease.instanceId, job.instanceId)
    assert.equal(lease.isCold, true)
    lease.release()
  })

  test('a standby still being restored (no address) is not claimed', async () => {
    const { pool, queue, registry } = await setup()
    assert.equal(await registry.reserveStandby('prep', { standby: 1, maxInstances: 5 }, 'prep-1', 'h'), true)
    const waiting = pool.acquire(testManifest('prep'), { traceId: 'a' })
    const [job] = await queue.waitForJobs(1)
    assert.ok(job)
    assert.equal(await registry.claimStandby('prep', 'prep-1'), undefined)
    await registry.markReady('prep', job.instanceId, ADDRESS, 'lazy', TEST_PHASES, 'h')
    queue.complete(job.instanceId)
    ;(await waiting).release()
  })
})
