import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import type { InitlessError } from '../../shared/errors.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { createFakeRegistry } from '../../shared/registry-fake.ts'
import { createFakeRestoreQueue } from '../../shared/restore-queue-fake.ts'
import { createInstancePool, type InstancePool } from '../instance-pool.ts'
import { TEST_PHASES, testManifest } from '../test-support.ts'
import { createSlotLedger, type Outgoing, type SlotLedger, type ToWorker } from './slot-ledger.ts'
import { createWorkerSlots } from './worker-slots.ts'

const grants = (out: Outgoing[]) =>
  out.filter((o) => o.message.t === 'grant').map((o) => [o.worker, (o.message as { n: number }).n])
const kinds = (out: Outgoing[]) => out.map((o) => `${o.worker}:${o.message.t}`)
/** The ledger's `short` to worker `worker`. */
const short = (worker: number, need: number, failures = 0): Outgoing => ({
  worker,
  message: { t: 'short', fn: 'f', need, failures },
})
const want = (need: number, ids = ['i1'], concurrency = 4) =>
  ({ t: 'want', fn: 'f', need, ids, concurrency }) as const

describe('slot ledger', () => {
  test('grants free slots up to a fair share, never more than the concurrency', () => {
    const l = createSlotLedger({ workers: 2 })
    assert.deepEqual(grants(l.receive(1, want(1))), [[1, 2]])
    assert.deepEqual(grants(l.receive(2, want(3))), [[2, 2]])
    assert.deepEqual(
      l.held().get('f/i1'),
      new Map([
        [1, 2],
        [2, 2],
      ]),
    )
  })

  test('a worker short of slots recalls the idle ones of the others, then hears short', () => {
    const l = createSlotLedger({ workers: 2 })
    l.receive(1, want(4))
    const out = l.receive(2, want(1))
    assert.deepEqual(kinds(out), ['1:recall'])
    // Worker 1 gives back one idle slot: it goes to worker 2, whose demand is met; recall ends.
    const back = l.receive(1, { t: 'recalled', fn: 'f', id: 'i1', n: 1 })
    assert.deepEqual(grants(back), [[2, 1]])
    assert.deepEqual(kinds(back), ['2:grant', '1:settle'])
    assert.deepEqual(
      l.held().get('f/i1'),
      new Map([
        [1, 3],
        [2, 1],
      ]),
    )
  })

  test('all slots in use elsewhere: short once every holder answered', () => {
    const l = createSlotLedger({ workers: 3 })
    l.receive(1, want(2, ['i1'], 2))
    l.receive(3, want(0, ['i1'], 2))
    assert.deepEqual(kinds(l.receive(2, want(1, ['i1'], 2))), ['1:recall'])
    assert.deepEqual(kinds(l.receive(1, { t: 'recalled', fn: 'f', id: 'i1', n: 0 })), ['2:short'])
    // Later a request on worker 1 ends: the slot it gives back goes to worker 2.
    assert.deepEqual(grants(l.receive(1, { t: 'give', fn: 'f', id: 'i1', n: 1 })), [[2, 1]])
  })

  test('two workers short at once: one scaler hears the summed demand', () => {
    const l = createSlotLedger({ workers: 2 })
    // A burst from zero: no instance yet, both workers' requests wait.
    assert.deepEqual(l.receive(1, want(3, [])), [short(1, 3)])
    assert.deepEqual(l.receive(2, want(5, [])), [short(1, 8)])
    assert.equal(l.scaler('f'), 1)
    // Worker 2's demand grows: the scaler hears the new sum, worker 2 never hears short.
    assert.deepEqual(l.receive(2, want(7, [])), [short(1, 10)])
    // The scaler's own demand changes: it hears the sum again even though that did not change.
    assert.deepEqual(kinds(l.receive(1, want(3, []))), ['1:short'])
  })

  test('only demand whose slots are in use counts, less the free slots not yet listed', () => {
    const l = createSlotLedger({ workers: 2 })
    l.receive(1, want(4, ['i1'], 4))
    // Worker 2 waits on i1 too: its demand counts once worker 1 answered the recall.
    assert.deepEqual(kinds(l.receive(2, want(2, ['i1'], 4))), ['1:recall'])
    assert.deepEqual(l.receive(1, { t: 'recalled', fn: 'f', id: 'i1', n: 0 }), [short(2, 2)])
    // A new instance: worker 2 lists it and takes 2 of its slots; worker 1 has not seen it yet.
    const out = l.receive(1, want(3, ['i1'], 4))
    assert.deepEqual(out, [short(2, 5)])
    // i2's 2 free slots will serve worker 1 once it lists i2: 3 - 2 remain short.
    assert.deepEqual(l.receive(2, want(2, ['i1', 'i2'], 4)), [
      { worker: 2, message: { t: 'grant', fn: 'f', id: 'i2', n: 2 } },
      short(2, 1),
    ])
    assert.equal(l.scaler('f'), 2)
    assert.deepEqual(l.receive(1, want(3, ['i1'], 4)), [])
  })

  test('a failed start reaches every wanting worker; the scaler waits for their demand', () => {
    const l = createSlotLedger({ workers: 3 })
    l.receive(1, want(2, []))
    l.receive(2, want(2, []))
    l.receive(3, want(1, []))
    const error = { code: 'ERR_RESTORE_FAILED', message: 'restore failed', details: {} }
    const out = l.receive(1, { t: 'start-failed', fn: 'f', error })
    assert.deepEqual(kinds(out), ['2:start-failed', '3:start-failed'])
    // Until all three told their demand after charging the failure, the scaler hears nothing.
    assert.deepEqual(l.receive(2, want(2, [])), [])
    assert.deepEqual(l.receive(1, want(2, [])), [])
    // Its next short counts the failure it reported: a short that crossed the report is void.
    assert.deepEqual(l.receive(3, want(0, [])), [short(1, 4, 1)])
  })

  test('demand that disappears: the scaler hears 0 and starts nothing', () => {
    const l = createSlotLedger({ workers: 2 })
    l.receive(1, want(2, []))
    l.receive(2, want(2, []))
    assert.deepEqual(l.receive(2, want(0, [])), [short(1, 2)])
    assert.deepEqual(l.receive(1, want(0, [])), [short(1, 0)])
  })

  test("a dead scaler's demand goes to the next wanting worker", () => {
    const l = createSlotLedger({ workers: 3 })
    l.receive(1, want(2, []))
    l.receive(2, want(3, []))
    l.receive(3, want(1, []))
    // Worker 1's requests died with it: worker 2 now decides, for the demand that is left.
    assert.deepEqual(l.workerGone(1), [short(2, 4)])
    assert.equal(l.scaler('f'), 2)
    // No worker wants any more: no scaler until one does.
    l.workerGone(2)
    l.receive(3, want(0, []))
    l.workerGone(3)
    assert.equal(l.scaler('f'), undefined)
  })

  test('a worker that exits frees its slots for the others', () => {
    const l = createSlotLedger({ workers: 2 })
    l.receive(1, want(1, ['i1'], 1))
    assert.deepEqual(kinds(l.receive(2, want(1, ['i1'], 1))), ['1:recall'])
    assert.deepEqual(grants(l.workerGone(1)), [[2, 1]])
    assert.deepEqual(l.held().get('f/i1'), new Map([[2, 1]]))
  })
})

/** Counts the reservations made in `registry` (the starts tried). */
function countReservations(registry: ReturnType<typeof createFakeRegistry>): () => number {
  let reserved = 0
  const reserve = registry.reserve.bind(registry)
  registry.reserve = (...args) => (reserved++, reserve(...args))
  return () => reserved
}

/** Pools as worker processes would run them, their slots wired to one ledger through async "IPC". */
function cluster(workers: number) {
  const ledger: SlotLedger = createSlotLedger({ workers })
  const listeners = new Map<number, (m: ToWorker) => void>()
  const toWorkers = (out: Outgoing[]) => {
    for (const o of out) setImmediate(() => listeners.get(o.worker)?.(o.message))
  }
  const registry = createFakeRegistry()
  const reservations = countReservations(registry)
  const queue = createFakeRestoreQueue()
  const pools: InstancePool[] = []
  for (let w = 1; w <= workers; w++) {
    const slots = createWorkerSlots({
      send: (m) => setImmediate(() => toWorkers(ledger.receive(w, m))),
      onMessage: (l) => listeners.set(w, l),
    })
    pools.push(
      createInstancePool({
        registry,
        queue,
        logger: createSilentLogger(),
        slots,
      }),
    )
  }
  return {
    ledger,
    registry,
    queue,
    pools,
    /** Instances reserved so far (starts tried). */
    reservations,
    /** Messages to worker `w` are lost from now on. */
    hang(w: number) {
      listeners.delete(w)
    },
    crash(w: number) {
      listeners.delete(w)
      toWorkers(ledger.workerGone(w))
    },
  }
}

const open: InstancePool[] = []
after(() => Promise.all(open.map((p) => p.close())))

/** cluster(), its pools started (and closed after the file). */
async function startCluster(workers: number) {
  const c = cluster(workers)
  open.push(...c.pools)
  await Promise.all(c.pools.map((p) => p.start()))
  return c
}

/** Instance i1 of `f` reserved (up to `maxInstances`) and ready. */
async function ready(registry: ReturnType<typeof createFakeRegistry>, maxInstances: number) {
  assert.equal(await registry.reserve('f', maxInstances, 'i1'), true)
  await registry.markReady('f', 'i1', { host: '127.0.0.1', port: 1 }, 'lazy', TEST_PHASES, 'h')
}

describe('instance pools of several workers sharing slots', () => {
  for (const concurrency of [1, 3]) {
    test(`an instance with concurrency ${concurrency} never has more requests at once`, async () => {
      const c = await startCluster(3)
      const m = testManifest('f', { concurrency, maxInstances: 1, start: '10s' })
      await ready(c.registry, 1)
      let inflight = 0
      let most = 0
      let served = 0
      const one = async (pool: InstancePool) => {
        const lease = await pool.acquire(m, { traceId: 't' })
        inflight++
        most = Math.max(most, inflight)
        await new Promise((r) => setTimeout(r, Math.random() * 3))
        inflight--
        served++
        lease.release()
      }
      await Promise.all(Array.from({ length: 90 }, (_, i) => one(c.pools[i % 3]!)))
      assert.equal(served, 90)
      assert.equal(most, concurrency)
      const held = [...(c.ledger.held().get('f/i1')?.values() ?? [])].reduce((a, n) => a + n, 0)
      assert.ok(held <= concurrency, `held ${held}`)
    })
  }

  test('the slots of an instance that went away are given back at once', async () => {
    const c = await startCluster(2)
    const m = testManifest('f', { concurrency: 4, maxInstances: 2, start: '10s' })
    await ready(c.registry, 2)
    const leases = await Promise.all(c.pools.map((p) => p.acquire(m, { traceId: 't' })))
    for (const l of leases) l.release()
    assert.ok(c.ledger.held().has('f/i1'))
    await c.registry.remove('f', 'i1')
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r))
    assert.equal(c.ledger.held().has('f/i1'), false)
  })

  test("a crashed worker's slots go to the workers waiting for them", async () => {
    const c = await startCluster(2)
    const m = testManifest('f', { concurrency: 1, maxInstances: 1, start: '10s' })
    await ready(c.registry, 1)
    const [a, b] = c.pools as [InstancePool, InstancePool]
    await a.acquire(m, { traceId: 't' }) // held forever: worker 1 dies with it in flight
    const waiting = b.acquire(m, { traceId: 't' })
    const early = await Promise.race([
      waiting.then(() => 'served'),
      new Promise((r) => setTimeout(r, 50, 'waits')),
    ])
    assert.equal(early, 'waits')
    c.crash(1)
    const lease = await waiting
    assert.equal(lease.instanceId, 'i1')
    lease.release()
  })
})

/**
 * `requests` requests from zero split round-robin across `pools`; returns the restores started once
 * the starts settled, then makes those instances ready and checks every request gets a lease.
 */
async function burst(
  pools: readonly InstancePool[],
  registry: ReturnType<typeof createFakeRegistry>,
  queue: ReturnType<typeof createFakeRestoreQueue>,
  m: ReturnType<typeof testManifest>,
  requests: number,
): Promise<number> {
  const leases = Array.from({ length: requests }, (_, i) =>
    pools[i % pools.length]!.acquire(m, { traceId: `t${i}` }),
  )
  // Let every want, short and reservation go round (several IPC hops of setImmediate each).
  for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r))
  await new Promise((r) => setTimeout(r, 20))
  const started = queue.jobs.filter((j) => j.fn === m.name).length
  for (const [n, j] of queue.jobs.entries())
    await registry.markReady(
      m.name,
      j.instanceId,
      { host: '127.0.0.1', port: 1 + n },
      'lazy',
      TEST_PHASES,
      'h',
    )
  const served = await Promise.all(leases)
  assert.equal(served.length, requests)
  for (const l of served) l.release()
  return started
}

describe('scale-up of several workers', () => {
  for (const { concurrency, requests } of [
    { concurrency: 50, requests: 20 },
    { concurrency: 4, requests: 20 },
    { concurrency: 3, requests: 7 },
  ]) {
    test(`a burst of ${requests} from zero, concurrency ${concurrency}: what one process starts`, async () => {
      const m = testManifest('f', { concurrency, maxInstances: 20, start: '10s' })
      const registry = createFakeRegistry()
      const queue = createFakeRestoreQueue()
      const single = createInstancePool({ registry, queue, logger: createSilentLogger() })
      open.push(single)
      await single.start()
      const alone = await burst([single], registry, queue, m, requests)
      assert.equal(alone, Math.ceil(requests / concurrency))

      for (const workers of [2, 3]) {
        const c = await startCluster(workers)
        assert.equal(await burst(c.pools, c.registry, c.queue, m, requests), alone, `${workers} workers`)
      }
    })
  }

  test("a dead scaler's demand is started by another worker", async () => {
    const c = await startCluster(2)
    const m = testManifest('f', { concurrency: 10, maxInstances: 5, start: '10s' })
    // Worker 1 wants first and so decides the scale-up, but hangs: it hears nothing any more.
    c.hang(1)
    void c.pools[0]!.acquire(m, { traceId: 'a' }).catch(() => undefined)
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r))
    const waiting = c.pools[1]!.acquire(m, { traceId: 'b' })
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r))
    assert.equal(c.ledger.scaler('f'), 1)
    assert.equal(c.queue.jobs.length, 0)
    // It dies: worker 2 decides now, for its own request.
    c.crash(1)
    const [job] = await c.queue.waitForJobs(1)
    await c.registry.markReady('f', job!.instanceId, { host: '127.0.0.1', port: 1 }, 'lazy', TEST_PHASES, 'h')
    const lease = await waiting
    assert.equal(lease.instanceId, job!.instanceId)
    assert.equal(c.queue.jobs.length, 1)
    lease.release()
  })

  test('a start that keeps failing ends the waiters of every worker after the retries', async () => {
    const m = testManifest('f', { concurrency: 10, maxInstances: 5, start: '10s' })
    const tries: number[] = []
    for (const workers of [1, 2, 3]) {
      const registry = createFakeRegistry()
      const reservations = countReservations(registry)
      const queue = createFakeRestoreQueue()
      const c = workers === 1 ? undefined : cluster(workers)
      const pools = c?.pools ?? [createInstancePool({ registry, queue, logger: createSilentLogger() })]
      open.push(...pools)
      await Promise.all(pools.map((p) => p.start()))
      ;(c?.queue ?? queue).setAvailable(false)
      const answers = await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          pools[i % pools.length]!.acquire(m, { traceId: `t${i}` }).then(
            () => 'served',
            (err: InitlessError) => err.code,
          ),
        ),
      )
      assert.deepEqual(answers, Array(6).fill('ERR_GATEWAY_NO_CAPACITY'))
      tries.push((c?.reservations ?? reservations)())
    }
    // As many starts as one process tries (1 + maxRestoreRetries), however the workers split them.
    assert.deepEqual(tries, [3, 3, 3])
  })
})
