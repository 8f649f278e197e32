import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
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

  test('a worker that exits frees its slots for the others', () => {
    const l = createSlotLedger({ workers: 2 })
    l.receive(1, want(1, ['i1'], 1))
    assert.deepEqual(kinds(l.receive(2, want(1, ['i1'], 1))), ['1:recall'])
    assert.deepEqual(grants(l.workerGone(1)), [[2, 1]])
    assert.deepEqual(l.held().get('f/i1'), new Map([[2, 1]]))
  })
})

/** Pools as worker processes would run them, their slots wired to one ledger through async "IPC". */
function cluster(workers: number) {
  const ledger: SlotLedger = createSlotLedger({ workers })
  const listeners = new Map<number, (m: ToWorker) => void>()
  const toWorkers = (out: Outgoing[]) => {
    for (const o of out) setImmediate(() => listeners.get(o.worker)?.(o.message))
  }
  const registry = createFakeRegistry()
  const pools: InstancePool[] = []
  for (let w = 1; w <= workers; w++) {
    const slots = createWorkerSlots({
      send: (m) => setImmediate(() => toWorkers(ledger.receive(w, m))),
      onMessage: (l) => listeners.set(w, l),
    })
    pools.push(
      createInstancePool({
        registry,
        queue: createFakeRestoreQueue(),
        logger: createSilentLogger(),
        slots,
      }),
    )
  }
  return {
    ledger,
    registry,
    pools,
    crash(w: number) {
      listeners.delete(w)
      toWorkers(ledger.workerGone(w))
    },
  }
}

const open: InstancePool[] = []
after(() => Promise.all(open.map((p) => p.close())))

describe('instance pools of several workers sharing slots', () => {
  for (const concurrency of [1, 3]) {
    test(`an instance with concurrency ${concurrency} never has more requests at once`, async () => {
      const c = cluster(3)
      open.push(...c.pools)
      await Promise.all(c.pools.map((p) => p.start()))
      const m = testManifest('f', { concurrency, maxInstances: 1, start: '10s' })
      const reserved = await c.registry.reserve('f', 1, 'i1')
      assert.equal(reserved, true)
      await c.registry.markReady('f', 'i1', { host: '127.0.0.1', port: 1 }, 'lazy', TEST_PHASES, 'h')
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

  test("a crashed worker's slots go to the workers waiting for them", async () => {
    const c = cluster(2)
    open.push(...c.pools)
    await Promise.all(c.pools.map((p) => p.start()))
    const m = testManifest('f', { concurrency: 1, maxInstances: 1, start: '10s' })
    await c.registry.reserve('f', 1, 'i1')
    await c.registry.markReady('f', 'i1', { host: '127.0.0.1', port: 1 }, 'lazy', TEST_PHASES, 'h')
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
