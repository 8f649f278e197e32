import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import type { RestoreJobData } from '../shared/contracts.ts'
import { isInitlessError } from '../shared/errors.ts'
import { createSilentLogger } from '../shared/logger.ts'
import type { Manifest } from '../shared/manifest.ts'
import { createFakeRegistry, type FakeRegistry } from '../shared/registry-fake.ts'
import type { InstanceRegistry } from '../shared/registry.ts'
import { createInstancePool, type InstancePool, type InstancePoolDeps, type Lease } from './instance-pool.ts'
import { createFakeRestoreQueue, type FakeRestoreQueue } from '../shared/restore-queue-fake.ts'
import { TEST_PHASES, testManifest } from './test-support.ts'

const ADDRESS = { host: '127.0.0.1', port: 1 }

async function untilAsync(check: () => Promise<boolean>, what: string) {
  const deadline = Date.now() + 2000
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

interface Setup {
  pool: InstancePool
  registry: FakeRegistry
  queue: FakeRestoreQueue
  /** Act as the executor: mark the job's instance ready and complete the job. */
  ready: (job: RestoreJobData, port?: number) => Promise<void>
}

const pools: InstancePool[] = []
after(() => Promise.all(pools.map((p) => p.close())))

async function setup(
  deps: Partial<Omit<InstancePoolDeps, 'queue' | 'logger'>> & {
    registry?: InstancePoolDeps['registry']
    /** The fake registry behind `ready` (and the pool, unless `registry` is given): share one between pools. */
    fake?: FakeRegistry
  } = {},
): Promise<Setup> {
  const { fake, ...rest } = deps
  const registry = fake ?? createFakeRegistry()
  const queue = createFakeRestoreQueue()
  const pool = createInstancePool({ registry, queue, logger: createSilentLogger(), ...rest })
  pools.push(pool)
  await pool.start()
  return {
    pool,
    registry,
    queue,
    async ready(job, port = 1) {
      assert.equal(
        await registry.markReady(job.fn, job.instanceId, { ...ADDRESS, port }, 'lazy', TEST_PHASES, 'h'),
        true,
      )
      queue.complete(job.instanceId)
    },
  }
}

/** One cold request: its restore takes `restoreMs`, its answer `serviceMs` on the fake clock. */
async function learnTimes(
  s: Setup,
  m: Manifest,
  clock: { t: number },
  times: { readonly restoreMs: number; readonly serviceMs: number },
): Promise<RestoreJobData> {
  const first = s.pool.acquire(m, { traceId: 'learn' })
  const [job] = await s.queue.waitForJobs(1)
  assert.ok(job)
  clock.t += times.restoreMs
  await s.ready(job)
  const lease = await first
  clock.t += times.serviceMs
  lease.release()
  return job
}

/**
 * Serve the requests `size` at a time, each wave taking `ms` on the fake clock: a wave's releases
 * hand the slots to the next `size` waiters (FIFO). Returns the instances that served them.
 */
async function serveInWaves(
  leasing: readonly Promise<Lease>[],
  size: number,
  clock: { t: number },
  ms: number,
): Promise<Set<string>> {
  const served = new Set<string>()
  for (let i = 0; i < leasing.length; i += size) {
    const wave = await Promise.all(leasing.slice(i, i + size))
    clock.t += ms
    for (const l of wave) {
      served.add(l.instanceId)
      l.release()
    }
  }
  return served
}

async function until(cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 2))
  }
}

const codeOf = async (p: Promise<unknown>) => {
  try {
    await p
    return 'resolved'
  } catch (err) {
    return isInitlessError(err) ? err.code : String(err)
  }
}

describe('instance pool', () => {
  test('a cold request waits for the restore it triggered and is marked cold', async () => {
    const { pool, queue, ready } = await setup()
    const m = testManifest('cold')
    const leasing = pool.acquire(m, { traceId: 'req-1' })
    const [job] = await queue.waitForJobs(1)
    assert.ok(job)
    assert.equal(job.fn, 'cold')
    assert.equal(job.reason, 'demand')
    assert.equal(job.traceId, 'req-1')
    assert.ok(job.instanceId.startsWith('cold-'))
    await ready(job)
    const lease = await leasing
    assert.equal(lease.instanceId, job.instanceId)
    assert.equal(lease.isCold, true)
    assert.deepEqual(lease.phases, TEST_PHASES)
    lease.release()
    const warm = await pool.acquire(m, { traceId: 'req-2' })
    assert.equal(warm.isCold, false)
    assert.equal(warm.phases, undefined)
    warm.release()
    assert.equal(queue.jobs.length, 1)
  })

  test('a cold request served by a booted instance is marked booted', async () => {
    const { pool, queue, registry } = await setup()
    const m = testManifest('booted')
    const leasing = pool.acquire(m, { traceId: 'req-1' })
    const [job] = await queue.waitForJobs(1)
    assert.ok(job)
    assert.equal(await registry.markReady(job.fn, job.instanceId, ADDRESS, 'boot', TEST_PHASES, 'h'), true)
    queue.complete(job.instanceId)
    const lease = await leasing
    assert.equal(lease.isBooted, true)
    lease.release()
    const warm = await pool.acquire(m, { traceId: 'req-2' })
    assert.equal(warm.isBooted, undefined, 'only the cold request says so')
    warm.release()
  })

  test('100 concurrent cold requests start exactly the instances they need', async () => {
    const { pool, queue, ready } = await setup()
    const m = testManifest('burst', { concurrency: 10, maxInstances: 20 })
    const leasing = Array.from({ length: 100 }, (_, i) => pool.acquire(m, { traceId: `r${i}` }))
    const jobs = await queue.waitForJobs(10)
    await new Promise((r) => setTimeout(r, 20))
    assert.equal(queue.jobs.length, 10)
    await Promise.all(jobs.map((j, i) => ready(j, 1000 + i)))
    const leases = await Promise.all(leasing)
    const perInstance = new Map<string, number>()
    for (const l of leases) perInstance.set(l.instanceId, (perInstance.get(l.instanceId) ?? 0) + 1)
    assert.equal(perInstance.size, 10)
    assert.ok([...perInstance.values()].every((n) => n === 10))
    leases.forEach((l) => l.release())
  })

  test('once restore and service times are known, a burst the ready instance drains starts none', async () => {
    const clock = { t: 1_000_000 }
    const s = await setup({ now: () => clock.t })
    const m = testManifest('drain', { concurrency: 10, maxInstances: 20 })
    const job = await learnTimes(s, m, clock, { restoreMs: 200, serviceMs: 10 })
    assert.deepEqual(s.pool.stats(), [
      {
        fn: 'drain',
        ready: 1,
        starting: 0,
        waiting: 0,
        inflight: 0,
        frozen: 0,
        frozenMemoryBytes: 0,
        restoreMs: 200,
        serviceMs: 10,
      },
    ])
    // Fill the instance, then 100 more: by slots they need 10 instances; at 10 ms per request and
    // 10 at once the one instance answers them in 100 ms, before a new restore (200 ms) could.
    const leasing = Array.from({ length: 110 }, (_, i) => s.pool.acquire(m, { traceId: `w${i}` }))
    await new Promise((r) => setTimeout(r, 20))
    assert.equal(s.queue.jobs.length, 1)
    assert.deepEqual([...(await serveInWaves(leasing, 10, clock, 10))], [job.instanceId])
    assert.equal(s.queue.jobs.length, 1)
  })

  test('a burst waiting on its one restore survives that restore failing', async () => {
    const clock = { t: 1_000_000 }
    const s = await setup({ now: () => clock.t })
    const m = testManifest('drain-fail', { concurrency: 10, maxInstances: 20 })
    const job = await learnTimes(s, m, clock, { restoreMs: 200, serviceMs: 10 })
    // Scaled to zero: the instance leaves the registry; the learnt times stay.
    await s.registry.remove(job.fn, job.instanceId)
    await until(() => s.pool.stats().find((st) => st.fn === 'drain-fail')?.ready === 0)
    const leasing = Array.from({ length: 30 }, (_, i) => s.pool.acquire(m, { traceId: `w${i}` }))
    const [, retry] = await s.queue.waitForJobs(2)
    assert.ok(retry)
    await new Promise((r) => setTimeout(r, 20))
    assert.equal(s.queue.jobs.length, 2, 'one restore for the 30: the instance would answer them in 30 ms')
    s.queue.fail(retry.instanceId, 'criu restore exited with 1')
    const [, , again] = await s.queue.waitForJobs(3)
    assert.ok(again, 'the waiters start a new restore')
    await s.ready(again, 2000)
    assert.deepEqual([...(await serveInWaves(leasing, 10, clock, 10))], [again.instanceId])
    assert.equal(s.queue.jobs.length, 3)
  })

  test('learnt times are shared: a new gateway decides its first burst with them', async () => {
    const clock = { t: 1_000_000 }
    const fake = createFakeRegistry()
    const m = testManifest('shared', { concurrency: 10, maxInstances: 20 })
    const a = await setup({ fake, now: () => clock.t })
    const job = await learnTimes(a, m, clock, { restoreMs: 200, serviceMs: 10 })
    await a.pool.close() // shares what it learnt
    assert.deepEqual(await fake.scalingEstimates('shared'), { restoreMs: 200, serviceMs: 10, at: clock.t })
    await fake.remove(job.fn, job.instanceId)

    // Gateway b never saw the function: 100 waiting need 10 instances by slots, 1 by drain time.
    const b = await setup({ fake, now: () => clock.t })
    const leasing = Array.from({ length: 100 }, (_, i) => b.pool.acquire(m, { traceId: `w${i}` }))
    const [only] = await b.queue.waitForJobs(1)
    assert.ok(only)
    await new Promise((r) => setTimeout(r, 20))
    assert.equal(b.queue.jobs.length, 1)
    await b.ready(only, 2)
    assert.deepEqual([...(await serveInWaves(leasing, 10, clock, 10))], [only.instanceId])
    assert.equal(b.queue.jobs.length, 1)
  })

  test('slow answers bring back the slots rule', async () => {
    const clock = { t: 1_000_000 }
    const s = await setup({ now: () => clock.t })
    const m = testManifest('slow', { concurrency: 10, maxInstances: 20 })
    // A request holds its slot 5 s: waiting for this instance is slower than a restore.
    await learnTimes(s, m, clock, { restoreMs: 200, serviceMs: 5_000 })
    const leasing = Array.from({ length: 40 }, (_, i) => s.pool.acquire(m, { traceId: `w${i}` }))
    const jobs = await s.queue.waitForJobs(4)
    await new Promise((r) => setTimeout(r, 20))
    assert.equal(s.queue.jobs.length, 4)
    await Promise.all(jobs.slice(1).map((j, i) => s.ready(j, 2000 + i)))
    for (const l of await Promise.all(leasing)) l.release()
  })
  test('more demand than maxInstances waits for slots instead of starting more', async () => {
    const { pool, queue, ready } = await setup()
    const m = testManifest('capped', { concurrency: 2, maxInstances: 2 })
    const leasing = Array.from({ length: 6 }, (_, i) => pool.acquire(m, { traceId: `r${i}` }))
    const jobs = await queue.waitForJobs(2)
    await Promise.all(jobs.map((j) => ready(j)))
    const first = await Promise.all(leasing.slice(0, 4))
    let isLateServed = false
    const late = Promise.all(leasing.slice(4)).then((l) => ((isLateServed = true), l))
    await new Promise((r) => setTimeout(r, 20))
    assert.equal(isLateServed, false)
    first.forEach((l) => l.release())
    ;(await late).forEach((l) => l.release())
    assert.equal(queue.jobs.length, 2)
  })

  test('queue full answers no-capacity with a retry hint', async () => {
    const { pool } = await setup({ retryAfterMs: 2500 })
    const m = testManifest('full', { queueLimit: 1 })
    const waiting = pool.acquire(m, { traceId: 'a' })
    await assert.rejects(pool.acquire(m, { traceId: 'b' }), (err) => {
      assert.ok(isInitlessError(err, 'ERR_GATEWAY_NO_CAPACITY'))
      assert.equal(err.details.retryAfterS, 3)
      return true
    })
    await pool.close()
    assert.equal(await codeOf(waiting), 'ERR_GATEWAY_NO_CAPACITY')
  })

  test('a request that waits longer than timeouts.start fails with 504', async () => {
    const { pool } = await setup()
    const started = Date.now()
    assert.equal(
      await codeOf(pool.acquire(testManifest('slow', { start: '80ms' }), { traceId: 'a' })),
      'ERR_GATEWAY_TIMEOUT',
    )
    assert.ok(Date.now() - started >= 70)
  })

  test('a client that disconnects stops waiting and frees its place', async () => {
    const { pool, queue, ready } = await setup()
    const m = testManifest('abort', { queueLimit: 1 })
    const ac = new AbortController()
    const first = pool.acquire(m, { traceId: 'a', signal: ac.signal })
    await until(() => pool.stats().find((s) => s.fn === 'abort')?.waiting === 1)
    ac.abort()
    assert.equal(await codeOf(first), 'ERR_GATEWAY_CLIENT_CLOSED')
    const second = pool.acquire(m, { traceId: 'b' })
    const [job] = await queue.waitForJobs(1)
    await ready(job!)
    ;(await second).release()
    assert.equal(pool.stats().find((s) => s.fn === 'abort')?.waiting, 0)
  })

  test('a failed restore is retried on a new instance, then the error reaches the waiters', async () => {
    const { pool, queue } = await setup({ maxRestoreRetries: 2 })
    const waiting = pool.acquire(testManifest('broken'), { traceId: 'a' })
    for (let i = 1; i <= 3; i++) {
      const jobs = await queue.waitForJobs(i)
      queue.fail(jobs[i - 1]!.instanceId, 'runc restore exited with 1')
    }
    await assert.rejects(waiting, (err) => {
      assert.ok(isInitlessError(err, 'ERR_RESTORE_FAILED'))
      assert.match(err.message, /runc restore exited with 1/)
      return true
    })
    assert.equal(queue.jobs.length, 3)
    assert.equal(new Set(queue.jobs.map((j) => j.instanceId)).size, 3)
  })

  test('an executor that withdraws the reservation before failing the job still counts as a failure', async () => {
    const { pool, queue, registry } = await setup({ maxRestoreRetries: 1 })
    const waiting = pool.acquire(testManifest('withdrawn'), { traceId: 'a' })
    for (let i = 1; i <= 2; i++) {
      const job = (await queue.waitForJobs(i))[i - 1]!
      assert.equal(await registry.withdraw('withdrawn', job.instanceId), true)
      await new Promise((r) => setTimeout(r, 10))
      assert.equal(queue.jobs.length, i, 'no replacement before the failure is known')
      queue.fail(job.instanceId, 'sandbox setup failed')
    }
    await assert.rejects(waiting, (err) => isInitlessError(err, 'ERR_RESTORE_FAILED'))
    assert.equal(queue.jobs.length, 2)
  })

  test('a withdrawn reservation seen by a full read before its event still waits for the failure', async () => {
    const fake = createFakeRegistry()
    // The withdrawal's event is late (a separate connection): the periodic full read sees it first.
    const { pool, queue } = await setup({
      fake,
      maxRestoreRetries: 1,
      refreshIntervalMs: 5,
      registry: {
        ...pick(fake),
        subscribe: (l) =>
          fake.subscribe({
            ...l,
            onEvent: (e) => (e.type === 'instance' && e.state === 'gone' ? undefined : l.onEvent(e)),
          }),
      },
    })
    const waiting = pool.acquire(testManifest('withdrawn-read'), { traceId: 'a' })
    for (let i = 1; i <= 2; i++) {
      const job = (await queue.waitForJobs(i))[i - 1]!
      assert.equal(await fake.withdraw('withdrawn-read', job.instanceId), true)
      await new Promise((r) => setTimeout(r, 40)) // several full reads
      assert.equal(queue.jobs.length, i, 'no replacement before the failure is known')
      queue.fail(job.instanceId, 'sandbox setup failed')
    }
    await assert.rejects(waiting, (err) => isInitlessError(err, 'ERR_RESTORE_FAILED'))
    assert.equal(queue.jobs.length, 2)
  })

  test('a restore that fails with a non-retryable code fails the waiters at once', async () => {
    const { pool, queue, registry } = await setup()
    const waiting = pool.acquire(testManifest('nosnap'), { traceId: 'a' })
    const [job] = await queue.waitForJobs(1)
    queue.fail(job!.instanceId, {
      code: 'ERR_SNAPSHOT_NOT_FOUND',
      message: 'no snapshot for nosnap',
      retryable: false,
    })
    await assert.rejects(
      waiting,
      (err) => isInitlessError(err, 'ERR_SNAPSHOT_NOT_FOUND') && err.status === 503,
    )
    assert.equal(queue.jobs.length, 1)
    await new Promise((r) => setTimeout(r, 5))
    assert.equal(await registry.get('nosnap', job!.instanceId), undefined, 'the reservation is withdrawn')
  })

  test('registry down: a cold request fails fast with no-capacity', async () => {
    const { pool, registry } = await setup()
    registry.setAvailable(false)
    assert.equal(
      await codeOf(pool.acquire(testManifest('down'), { traceId: 'a' })),
      'ERR_GATEWAY_NO_CAPACITY',
    )
    registry.setAvailable(true)
    // Known function, registry lost afterwards: reserve() fails, bounded retries, then 503.
    const m = testManifest('down-later')
    await codeOf(pool.acquire(m, { traceId: 'b', signal: AbortSignal.abort() }))
    registry.setAvailable(false)
    const started = Date.now()
    assert.equal(await codeOf(pool.acquire(m, { traceId: 'c' })), 'ERR_GATEWAY_NO_CAPACITY')
    assert.ok(Date.now() - started < 1000)
    registry.setAvailable(true)
  })

  test('queue down after the reservation: the reservation is withdrawn and the request fails fast', async () => {
    const { pool, queue, registry } = await setup({ maxRestoreRetries: 1 })
    const m = testManifest('qdown')
    await pool.acquire(m, { traceId: 'warm-up', signal: AbortSignal.abort() }).catch(() => undefined)
    queue.setAvailable(false)
    assert.equal(await codeOf(pool.acquire(m, { traceId: 'a' })), 'ERR_GATEWAY_NO_CAPACITY')
    await new Promise((r) => setTimeout(r, 5))
    assert.deepEqual(await registry.list('qdown'), [])
  })

  test('when other records fill maxInstances, nothing is enqueued and their instance is used', async () => {
    const { pool, queue, registry } = await setup()
    const m = testManifest('shared', { maxInstances: 1 })
    assert.equal(await registry.reserve('shared', 1, 'other-gw-instance'), true)
    const waiting = pool.acquire(m, { traceId: 'a' })
    await new Promise((r) => setTimeout(r, 20))
    assert.equal(queue.jobs.length, 0)
    await registry.markReady('shared', 'other-gw-instance', ADDRESS, 'lazy', TEST_PHASES, 'h')
    const lease = await waiting
    assert.equal(lease.instanceId, 'other-gw-instance')
    lease.release()
  })

  test('a dead instance is not used again even though the registry still lists it', async () => {
    const { pool, queue, ready } = await setup({ refreshIntervalMs: 10 })
    const m = testManifest('dead', { maxInstances: 2 })
    const first = pool.acquire(m, { traceId: 'a' })
    const [job] = await queue.waitForJobs(1)
    await ready(job!)
    ;(await first).markDead()
    const second = pool.acquire(m, { traceId: 'b' })
    const jobs = await queue.waitForJobs(2)
    await new Promise((r) => setTimeout(r, 30))
    await ready(jobs[1]!, 2)
    const lease = await second
    assert.equal(lease.instanceId, jobs[1]!.instanceId)
    lease.release()
  })

  test('missed pub/sub events are repaired by the periodic refresh', async () => {
    const deaf = (r: FakeRegistry): InstancePoolDeps['registry'] => ({
      ...pick(r),
      subscribe: () => Promise.resolve({ close: () => Promise.resolve() }),
    })
    const registry = createFakeRegistry()
    const { pool, queue } = await setup({ registry: deaf(registry), refreshIntervalMs: 20 })
    const waiting = pool.acquire(testManifest('deaf'), { traceId: 'a' })
    const [job] = await queue.waitForJobs(1)
    await registry.markReady('deaf', job!.instanceId, ADDRESS, 'lazy', TEST_PHASES, 'h')
    const lease = await waiting
    assert.equal(lease.isCold, true)
    lease.release()
  })

  test('release records the last use; prewarm reserves and enqueues', async () => {
    const { pool, queue, registry, ready } = await setup()
    const m = testManifest('pre', { maxInstances: 2 })
    const ids = await pool.prewarm(m, 3, 'admin')
    assert.equal(ids.length, 2, 'bounded by maxInstances')
    assert.deepEqual(
      queue.jobs.map((j) => j.reason),
      ['prewarm', 'prewarm'],
    )
    await Promise.all(queue.jobs.map((j) => ready(j)))
    await new Promise((r) => setTimeout(r, 5))
    const lease: Lease = await pool.acquire(m, { traceId: 'a' })
    assert.equal(lease.isCold, false)
    lease.release()
    await new Promise((r) => setTimeout(r, 5))
    assert.ok((await registry.lastUse('pre')).has(lease.instanceId))
  })

  test('tryAcquire takes a free slot synchronously and leaves every other case to acquire', async () => {
    const { pool, queue, ready } = await setup()
    const m = testManifest('sync', { concurrency: 1, maxInstances: 1 })
    assert.equal(pool.tryAcquire(m), undefined, 'not read from the registry yet')
    const leasing = pool.acquire(m, { traceId: 'a' })
    const [job] = await queue.waitForJobs(1)
    assert.ok(job)
    await ready(job)
    const first = await leasing
    assert.equal(pool.tryAcquire(m), undefined, 'the only slot is taken')
    const [{ restoreMs, ...stats } = { restoreMs: undefined }] = pool.stats()
    assert.deepEqual(stats, {
      fn: 'sync',
      ready: 1,
      starting: 0,
      waiting: 0,
      inflight: 1,
      frozen: 0,
      frozenMemoryBytes: 0,
    })
    assert.equal(typeof restoreMs, 'number', 'a restore was seen; no request has ended yet')
    first.release()
    const lease = pool.tryAcquire(m)
    assert.ok(lease)
    assert.equal(lease.instanceId, job.instanceId)
    assert.equal(lease.isCold, false)
    assert.equal(lease.waitedMs, 0)
    assert.equal(pool.stats()[0]?.inflight, 1)
    lease.release()
    assert.equal(pool.stats()[0]?.inflight, 0)
    await pool.close()
    assert.equal(pool.tryAcquire(m), undefined, 'closing')
    assert.equal(queue.jobs.length, 1)
  })

  test('a ready event hands the instance out from the record it carries, without reading it back', async () => {
    const fake = createFakeRegistry()
    let reads = 0
    const s = await setup({
      fake,
      registry: {
        ...pick(fake),
        subscribe: (l) => fake.subscribe(l),
        get: (...a) => (reads++, fake.get(...a)),
      },
    })
    const m = testManifest('carried')
    const leasing = s.pool.acquire(m, { traceId: 'a' })
    const [job] = await s.queue.waitForJobs(1)
    assert.ok(job)
    await fake.markReady(job.fn, job.instanceId, { ...ADDRESS, port: 4242 }, 'lazy', TEST_PHASES, 'h')
    const lease = await leasing
    assert.deepEqual(lease.address, { ...ADDRESS, port: 4242 })
    assert.equal(reads, 0)
    lease.release()
  })

  test('last use is written at most once per touch interval per instance', async () => {
    let clock = 10_000
    const touches: number[] = []
    const registry = createFakeRegistry()
    const { pool, queue } = await setup({
      registry: {
        ...pick(registry),
        subscribe: (l) => registry.subscribe(l),
        touch: (fn, id, at) => (touches.push(at), registry.touch(fn, id, at)),
      },
      now: () => clock,
      touchIntervalMs: 1000,
    })
    const m = testManifest('busy')
    const leasing = pool.acquire(m, { traceId: 'a' })
    const [job] = await queue.waitForJobs(1)
    assert.ok(job)
    await registry.markReady(job.fn, job.instanceId, ADDRESS, 'lazy', TEST_PHASES, 'h')
    queue.complete(job.instanceId)
    const first = await leasing
    first.release()
    for (let i = 0; i < 50; i++) {
      clock += 10
      pool.tryAcquire(m)?.release()
    }
    assert.deepEqual(touches, [10_000])
    clock += 1000
    pool.tryAcquire(m)?.release()
    assert.deepEqual(touches, [10_000, 11_500])
    assert.equal((await registry.lastUse('busy')).get(job.instanceId), 11_500)
  })

  test('after setVersion only the active version takes requests; the old one drains its in-flight count', async () => {
    const { pool, queue, registry } = await setup()
    const m = testManifest('ver')
    pool.setVersion('ver', 'v1')
    const first = pool.acquire(m, { traceId: 'a' })
    const [job1] = await queue.waitForJobs(1)
    assert.ok(job1)
    await registry.markReady('ver', job1.instanceId, ADDRESS, 'lazy', TEST_PHASES, 'h', 'v1')
    queue.complete(job1.instanceId)
    const onOld = await first
    assert.equal(onOld.instanceId, job1.instanceId)

    pool.setVersion('ver', 'v2')
    await untilAsync(async () => (await registry.inflight('ver', job1.instanceId)) === 1, 'in-flight shared')
    const second = pool.acquire(m, { traceId: 'b' })
    const jobs = await queue.waitForJobs(2)
    const job2 = jobs[1]
    assert.ok(job2, 'the old instance takes no new request: a restore of the new version starts')
    assert.equal(pool.tryAcquire(m), undefined, 'nothing to hand out until the new version is ready')
    await registry.markReady('ver', job2.instanceId, ADDRESS, 'lazy', TEST_PHASES, 'h', 'v2')
    queue.complete(job2.instanceId)
    const onNew = await second
    assert.equal(onNew.instanceId, job2.instanceId)
    onNew.release()
    onOld.release()
    await untilAsync(
      async () => (await registry.inflight('ver', job1.instanceId)) === 0,
      'in-flight back to 0',
    )
  })

  test('forget fails the waiters of a deleted function with 404', async () => {
    const { pool } = await setup()
    const waiting = pool.acquire(testManifest('gone'), { traceId: 'a' })
    await new Promise((r) => setTimeout(r, 5))
    pool.forget('gone')
    assert.equal(await codeOf(waiting), 'ERR_FUNCTION_NOT_FOUND')
  })

  test('close fails the waiters and refuses new requests', async () => {
    const { pool } = await setup()
    const waiting = pool.acquire(testManifest('closing'), { traceId: 'a' })
    await new Promise((r) => setTimeout(r, 5))
    await pool.close()
    await pool.close()
    assert.equal(await codeOf(waiting), 'ERR_GATEWAY_NO_CAPACITY')
    assert.equal(
      await codeOf(pool.acquire(testManifest('closing'), { traceId: 'b' })),
      'ERR_GATEWAY_NO_CAPACITY',
    )
  })
})

function pick(
  r: FakeRegistry,
): Pick<
  InstanceRegistry,
  | 'reserve'
  | 'claimStandby'
  | 'withdraw'
  | 'get'
  | 'list'
  | 'touch'
  | 'addInflight'
  | 'scalingEstimates'
  | 'saveScalingEstimates'
> {
  return {
    addInflight: (...a) => r.addInflight(...a),
    claimStandby: (...a) => r.claimStandby(...a),
    scalingEstimates: (...a) => r.scalingEstimates(...a),
    saveScalingEstimates: (...a) => r.saveScalingEstimates(...a),
    reserve: (...a) => r.reserve(...a),
    withdraw: (...a) => r.withdraw(...a),
    get: (...a) => r.get(...a),
    list: (...a) => r.list(...a),
    touch: (...a) => r.touch(...a),
  }
}
