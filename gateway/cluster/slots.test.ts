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
/** A want of `f`; without `granted`, sent after every grant reached the worker (see `ledger`). */
const want = (need: number, ids = ['i1'], concurrency = 4, granted?: number) =>
  ({ t: 'want', fn: 'f', need, ids, concurrency, granted: granted ?? -1 }) as const

/** A ledger whose wants with `granted` -1 count every slot granted to their worker so far. */
function ledger(workers: number): SlotLedger {
  const l = createSlotLedger({ workers })
  const granted = new Map<number, number>()
  const seen = (out: Outgoing[]) => {
    for (const o of out)
      if (o.message.t === 'grant') granted.set(o.worker, (granted.get(o.worker) ?? 0) + o.message.n)
    return out
  }
  return {
    ...l,
    receive: (worker, m) =>
      seen(
        l.receive(
          worker,
          m.t === 'want' && m.granted === -1 ? { ...m, granted: granted.get(worker) ?? 0 } : m,
        ),
      ),
    workerGone: (worker) => seen(l.workerGone(worker)),
  }
}
/** Each of `workers` in turn wanted a slot of i1 and was served: it holds its fair share. */
const served = (l: SlotLedger, ...workers: number[]) => {
  for (const w of workers) {
    l.receive(w, want(1))
    l.receive(w, want(0))
  }
}
/** Worker `worker`'s reply to the confirm it got in `out`: its demand now, `need`. */
const confirmed = (out: Outgoing[], worker: number, need: number, ids = ['i1'], concurrency = 4) => {
  const confirm = out.find((o) => o.worker === worker && o.message.t === 'confirm')?.message
  assert.ok(confirm?.t === 'confirm', `no confirm to worker ${worker} in ${kinds(out).join(' ')}`)
  return { ...want(need, ids, concurrency), confirm: confirm.seq }
}
/** Worker `worker`'s answer to the recall of i1 it got in `out`: `n` slots given back. */
const answer = (out: Outgoing[], worker: number, n: number) => {
  const recall = out.find((o) => o.worker === worker && o.message.t === 'recall')?.message
  assert.ok(recall?.t === 'recall', `no recall to worker ${worker} in ${kinds(out).join(' ')}`)
  return { t: 'recalled', fn: 'f', id: 'i1', n, seq: recall.seq } as const
}

describe('slot ledger', () => {
  test('grants free slots up to a fair share, never more than the concurrency', () => {
    const l = ledger(2)
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
    const l = ledger(2)
    l.receive(1, want(4))
    const out = l.receive(2, want(1))
    assert.deepEqual(kinds(out), ['1:recall'])
    // Worker 1 gives back one idle slot: it goes to worker 2, whose demand is met; recall ends.
    const back = l.receive(1, answer(out, 1, 1))
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
    const l = ledger(3)
    l.receive(1, want(2, ['i1'], 2))
    l.receive(3, want(0, ['i1'], 2))
    const recall = l.receive(2, want(1, ['i1'], 2))
    assert.deepEqual(kinds(recall), ['1:recall'])
    // Worker 2 confirms that it still waits: only then is it short.
    const confirm = l.receive(1, answer(recall, 1, 0))
    assert.deepEqual(kinds(confirm), ['2:confirm'])
    assert.deepEqual(l.receive(2, confirmed(confirm, 2, 1, ['i1'], 2)), [short(2, 1)])
    // Later a request on worker 1 ends: the slot it gives back goes to worker 2.
    assert.deepEqual(grants(l.receive(1, { t: 'give', fn: 'f', id: 'i1', n: 1 })), [[2, 1]])
  })

  test('an answer to an earlier recall does not answer the next one: no short for idle slots', () => {
    const l = ledger(3)
    l.receive(1, want(1))
    l.receive(2, want(1))
    // Worker 3 waits: both holders are recalled; worker 1's idle slot meets the demand, the recall
    // ends, and worker 2's answer (both its slots were in use then) is still on its way.
    const first = l.receive(3, want(1))
    assert.deepEqual(kinds(first), ['1:recall', '2:recall'])
    assert.deepEqual(kinds(l.receive(1, answer(first, 1, 1))), ['3:grant', '1:settle', '2:settle'])
    // Worker 1 waits again: worker 2 (its requests ended meanwhile) and 3 are recalled.
    const second = l.receive(1, want(1))
    assert.deepEqual(kinds(second), ['2:recall', '3:recall'])
    // Worker 2's old answer and worker 3's (its slot is in use) arrive: worker 2 has not answered
    // the new recall, so nothing is short yet.
    assert.deepEqual(l.receive(2, answer(first, 2, 0)), [])
    assert.deepEqual(l.receive(3, answer(second, 3, 0)), [])
    // Its answer gives back its two idle slots: worker 1 gets what it waits for, nobody starts.
    const back = l.receive(2, answer(second, 2, 2))
    assert.deepEqual(grants(back), [[1, 1]])
    assert.ok(!kinds(back).some((k) => k.endsWith(':short')), kinds(back).join(' '))
  })

  test('a want sent before a grant arrived does not count the slots on their way', () => {
    const l = ledger(3)
    served(l, 3, 4)
    // Worker 2 has two requests waiting: it gets one slot from each holder's answer.
    const recall = l.receive(2, want(2, ['i1'], 4, 0))
    assert.deepEqual(grants(l.receive(4, answer(recall, 4, 1))), [[2, 1]])
    assert.deepEqual(grants(l.receive(3, answer(recall, 3, 1))), [[2, 1]])
    // The first grant served one waiter; its want of 1 crossed the second grant: no recall, and
    // the scaler (worker 2, whose own demand changed) hears that nothing is short.
    assert.equal(l.scaler('f'), 2)
    assert.deepEqual(l.receive(2, want(1, ['i1'], 4, 1)), [short(2, 0)])
    assert.deepEqual(l.receive(2, want(0, ['i1'], 4, 2)), [short(2, 0)])
    // A later demand beyond what it got is its own again.
    assert.deepEqual(kinds(l.receive(2, want(1, ['i1'], 4, 2))), ['3:recall', '4:recall', '2:short'])
  })

  test('a demand that ended while its recall was answered is not short: its worker confirms first', () => {
    const l = ledger(2)
    // Worker 2 has 3 requests and its 2 slots in use; its demand for a third reaches the ledger.
    served(l, 1, 2)
    const recall = l.receive(2, want(1))
    assert.deepEqual(kinds(recall), ['1:recall'])
    // Worker 1's slots are in use by then. Its answer would make worker 2 short, but worker 2 is
    // asked first: its own requests ended meanwhile and served its third, it needs nothing.
    const confirm = l.receive(1, answer(recall, 1, 0))
    assert.deepEqual(kinds(confirm), ['2:confirm'])
    const ended = l.receive(2, want(0))
    assert.deepEqual(kinds(ended), ['1:settle', '2:short'])
    assert.deepEqual(ended.at(-1), short(2, 0))
    assert.deepEqual(l.receive(2, confirmed(confirm, 2, 0)), [short(2, 0)])
    // Still waiting at the confirm: short, and further wants count at once (no new confirm).
    const again = l.receive(2, want(1))
    assert.deepEqual(kinds(again), ['1:recall', '2:short'])
    const confirm2 = l.receive(1, answer(again, 1, 0))
    assert.deepEqual(kinds(confirm2), ['2:confirm'])
    assert.deepEqual(l.receive(2, confirmed(confirm2, 2, 1)), [short(2, 1)])
    assert.deepEqual(l.receive(2, want(2)), [short(2, 2)])
  })

  test('two workers short at once: one scaler hears the summed demand', () => {
    const l = ledger(2)
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
    const l = ledger(2)
    l.receive(1, want(4, ['i1'], 4))
    // Worker 2 waits on i1 too: its demand counts once worker 1 answered the recall.
    const recall = l.receive(2, want(2, ['i1'], 4))
    assert.deepEqual(kinds(recall), ['1:recall'])
    const confirm = l.receive(1, answer(recall, 1, 0))
    assert.deepEqual(l.receive(2, confirmed(confirm, 2, 2)), [short(2, 2)])
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
    const l = ledger(3)
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
    const l = ledger(2)
    l.receive(1, want(2, []))
    l.receive(2, want(2, []))
    assert.deepEqual(l.receive(2, want(0, [])), [short(1, 2)])
    assert.deepEqual(l.receive(1, want(0, [])), [short(1, 0)])
  })

  test("a dead scaler's demand goes to the next wanting worker", () => {
    const l = ledger(3)
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
    const l = ledger(2)
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

/**
 * Pools as worker processes would run them, their slots wired to one ledger through async "IPC":
 * each message a turn of the event loop later, or (`latencyMs`) a random time in [0, latencyMs)
 * later, in order on each channel as node:cluster's are, so that messages cross as on a busy host.
 */
function cluster(workers: number, latencyMs = 0) {
  const ledger: SlotLedger = createSlotLedger({ workers })
  const listeners = new Map<number, (m: ToWorker) => void>()
  /** Channel -> when its last message is delivered. */
  const tails = new Map<string, Promise<void>>()
  const later = (channel: string, deliver: () => void) => {
    if (!latencyMs) return void setImmediate(deliver)
    const tail = (tails.get(channel) ?? Promise.resolve())
      .then(() => new Promise<void>((r) => setTimeout(r, Math.random() * latencyMs)))
      .then(deliver)
    tails.set(channel, tail)
  }
  const toWorkers = (out: Outgoing[]) => {
    for (const o of out) later(`to ${o.worker}`, () => listeners.get(o.worker)?.(o.message))
  }
  const registry = createFakeRegistry()
  const reservations = countReservations(registry)
  const queue = createFakeRestoreQueue()
  const pools: InstancePool[] = []
  for (let w = 1; w <= workers; w++) {
    const slots = createWorkerSlots({
      send: (m) => later(`from ${w}`, () => toWorkers(ledger.receive(w, m))),
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
async function startCluster(workers: number, latencyMs = 0) {
  const c = cluster(workers, latencyMs)
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

  test('requests within the concurrency never start an instance, however the messages cross', async () => {
    const c = await startCluster(3, 3)
    const m = testManifest('f', { concurrency: 4, maxInstances: 10, start: '10s' })
    await ready(c.registry, 10)
    // Rounds of at most `concurrency` requests on random workers, each round after the last ended:
    // whatever slots move meanwhile, the instance always has room for every request.
    for (let round = 0; round < 60; round++) {
      const n = 1 + Math.floor(Math.random() * 4)
      await Promise.all(
        Array.from({ length: n }, async () => {
          const pool = c.pools[Math.floor(Math.random() * 3)]!
          const lease = await pool.acquire(m, { traceId: `r${round}` })
          await new Promise((r) => setTimeout(r, Math.random() * 3))
          lease.release()
        }),
      )
    }
    assert.equal(c.queue.jobs.length, 0, `restores started: ${c.queue.jobs.length}`)
  })

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
