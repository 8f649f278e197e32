/**
 * The InstanceRegistry contract, run against the Redis adapter (real Redis) and the in-memory fake,
 * so the fake the unit tests rely on behaves like the real thing.
 */
import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { EXECUTOR_FRESH_MS, type RegistryEvent } from '../shared/contracts.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { createRedis } from '../shared/redis.ts'
import { createFakeRegistry } from '../shared/registry-fake.ts'
import {
  createRedisRegistry,
  parseRegistryEvent,
  parseScalingEstimates,
  type InstanceRegistry,
} from '../shared/registry.ts'
import { cleanUp, isolation, REDIS_URL, redisSkipReason } from './gateway-harness.ts'

const ADDR = { host: '10.0.0.2', port: 31337 }
const PHASES = { queueMs: 1.25, sandboxMs: 0, restoreMs: 41.5, readyMs: 7 }
const skip = await redisSkipReason()

interface Impl {
  readonly name: string
  readonly skip?: string | undefined
  create(): Promise<InstanceRegistry>
}

const impls: Impl[] = [
  { name: 'fake', create: () => Promise.resolve(createFakeRegistry()) },
  {
    name: 'redis',
    skip,
    async create() {
      const redis = createRedis(REDIS_URL, { name: 'test-registry' })
      const iso = isolation()
      after(async () => {
        await cleanUp(redis, iso)
        redis.disconnect()
      })
      return createRedisRegistry({ redis, logger: createSilentLogger(), prefix: iso.prefix })
    },
  },
]

/** Collects events from a subscription until `count` arrived. */
async function collect(registry: InstanceRegistry) {
  const events: RegistryEvent[] = []
  const sub = await registry.subscribe({ onEvent: (e) => events.push(e) })
  return {
    events,
    sub,
    async until(count: number) {
      const deadline = Date.now() + 2000
      while (events.length < count) {
        if (Date.now() > deadline) throw new Error(`expected ${count} events, got ${JSON.stringify(events)}`)
        await new Promise((r) => setTimeout(r, 5))
      }
      return events
    },
  }
}

for (const impl of impls) {
  describe(`instance registry (${impl.name})`, { skip: impl.skip }, () => {
    test('reserve creates starting records up to maxInstances, counting all but draining ones', async () => {
      const r = await impl.create()
      assert.equal(await r.reserve('fn-a', 2, 'i1', 'host-1'), true)
      assert.equal(await r.reserve('fn-a', 2, 'i1'), false, 'id taken')
      assert.equal(await r.reserve('fn-a', 2, 'i2'), true)
      assert.equal(await r.reserve('fn-a', 2, 'i3'), false, 'full')
      assert.equal(await r.markDraining('fn-a', 'i2'), true)
      assert.equal(await r.reserve('fn-a', 2, 'i3'), true, 'a draining one leaves room')
      assert.equal(await r.reserve('fn-a', 2, 'i4'), false, 'full again')
      assert.equal(await r.remove('fn-a', 'i2'), true)
      assert.equal(await r.reserve('fn-a', 2, 'i4'), false, 'i1 and i3 fill it')
      const rec = await r.get('fn-a', 'i1')
      assert.equal(rec?.state, 'starting')
      assert.equal(rec?.hostId, 'host-1')
      assert.ok(Math.abs((rec?.createdAt ?? 0) - Date.now()) < 5000)
      assert.deepEqual(await r.functions(), ['fn-a'])
    })

    test('reserve is atomic under concurrency', async () => {
      const r = await impl.create()
      const results = await Promise.all(Array.from({ length: 50 }, (_, i) => r.reserve('race', 7, `i${i}`)))
      assert.equal(results.filter(Boolean).length, 7)
      assert.equal((await r.list('race')).length, 7)
    })

    test('markReady, markDraining, withdraw and remove follow the state machine and publish', async () => {
      const r = await impl.create()
      const c = await collect(r)
      assert.equal(await r.markReady('fn-b', 'missing', ADDR, 'lazy', PHASES, 'h'), false)
      await r.reserve('fn-b', 5, 'i1')
      await r.reserve('fn-b', 5, 'i2')
      assert.equal(await r.markReady('fn-b', 'i1', ADDR, 'lazy', PHASES, 'host-9'), true)
      const ready = await r.get('fn-b', 'i1')
      assert.equal(ready?.state, 'ready')
      assert.deepEqual(ready?.address, ADDR)
      assert.deepEqual(ready?.phases, PHASES)
      assert.equal(ready?.runtime, 'lazy')
      assert.equal(ready?.hostId, 'host-9')
      assert.equal(typeof ready?.readyAt, 'number')
      assert.equal(await r.withdraw('fn-b', 'i1'), false, 'ready: not withdrawn')
      assert.equal(await r.withdraw('fn-b', 'i2'), true)
      assert.equal(await r.markDraining('fn-b', 'i1'), true)
      assert.equal(
        await r.markReady('fn-b', 'i1', ADDR, 'lazy', PHASES, 'h'),
        false,
        'no way back from draining',
      )
      assert.equal(await r.remove('fn-b', 'i1'), true)
      assert.equal(await r.remove('fn-b', 'i1'), false)
      assert.deepEqual(await r.list('fn-b'), [])
      const state = (id: string, s: string) => ({ type: 'instance', fn: 'fn-b', id, state: s })
      assert.deepEqual(await c.until(6), [
        state('i1', 'starting'),
        state('i2', 'starting'),
        { ...state('i1', 'ready'), record: ready }, // the record as written: no read needed
        state('i2', 'gone'),
        state('i1', 'draining'),
        state('i1', 'gone'),
      ])
      await c.sub.close()
    })

    test('draining instances do not count toward maxInstances', async () => {
      const r = await impl.create()
      assert.equal(await r.reserve('fn-d', 1, 'old'), true)
      assert.equal(await r.reserve('fn-d', 1, 'new'), false, 'full')
      await r.markReady('fn-d', 'old', ADDR, 'lazy', PHASES, 'h', 'v1')
      await r.markDraining('fn-d', 'old')
      assert.equal(await r.reserve('fn-d', 1, 'new'), true, 'the draining one leaves room')
      assert.equal(await r.reserve('fn-d', 1, 'third'), false)
    })

    test('versions, shared in-flight counts of draining instances, and forget', async () => {
      const r = await impl.create()
      await r.reserve('fn-v', 5, 'i1')
      assert.equal(await r.markReady('fn-v', 'i1', ADDR, 'lazy', PHASES, 'h', 'v7'), true)
      assert.equal((await r.get('fn-v', 'i1'))?.version, 'v7')
      assert.equal(await r.inflight('fn-v', 'i1'), 0)
      await r.addInflight('fn-v', 'i1', 2)
      await r.addInflight('fn-v', 'i1', -1)
      assert.equal(await r.inflight('fn-v', 'i1'), 1)
      await r.addInflight('fn-v', 'nope', 3)
      assert.equal(await r.inflight('fn-v', 'nope'), 0, 'no count for an instance that is not there')
      await r.saveScalingEstimates('fn-v', { at: 1, restoreMs: 5 })
      await r.requestRebake('fn-v')
      assert.equal(await r.forget('fn-v'), false, 'not while an instance record is left')
      await r.remove('fn-v', 'i1')
      assert.equal(await r.inflight('fn-v', 'i1'), 0, 'the count goes with the record')
      assert.equal(await r.forget('fn-v'), true)
      assert.deepEqual(await r.functions(), [])
      assert.equal(await r.scalingEstimates('fn-v'), undefined)
    })

    test('an event is published only once its change is readable', async () => {
      const r = await impl.create()
      const seen: string[] = []
      const sub = await r.subscribe({
        onEvent: (e) => {
          if (e.type === 'instance' && e.state === 'ready') {
            void r.get(e.fn, e.id).then((rec) => seen.push(rec?.state ?? 'missing'))
          }
        },
      })
      await r.reserve('fn-c', 1, 'i1')
      await r.markReady('fn-c', 'i1', ADDR, 'eager', PHASES, 'h')
      const deadline = Date.now() + 2000
      while (!seen.length && Date.now() < deadline) await new Promise((res) => setTimeout(res, 5))
      assert.deepEqual(seen, ['ready'])
      await sub.close()
    })

    test('touch records last use of existing instances only', async () => {
      const r = await impl.create()
      await r.reserve('fn-d', 2, 'i1')
      await r.touch('fn-d', 'i1', 1_700_000_000_123)
      await r.touch('fn-d', 'ghost', 1)
      assert.deepEqual([...(await r.lastUse('fn-d'))], [['i1', 1_700_000_000_123]])
      await r.remove('fn-d', 'i1')
      assert.deepEqual([...(await r.lastUse('fn-d'))], [])
    })

    test('listAll spans functions; heartbeats; function events; closed subscriptions hear nothing', async () => {
      const r = await impl.create()
      await r.reserve('fn-e', 2, 'e1')
      await r.reserve('fn-f', 2, 'f1')
      assert.deepEqual((await r.listAll()).map((i) => `${i.fn}/${i.id}`).sort(), ['fn-e/e1', 'fn-f/f1'])
      await r.beat({ hostId: 'h1', at: 5, pid: 10, functions: ['fn-e'] })
      await r.beat({ hostId: 'h1', at: 6, pid: 10, functions: [] })
      assert.deepEqual(await r.executors(), [{ hostId: 'h1', at: 6, pid: 10, functions: [] }])
      const c = await collect(r)
      await r.publish({ type: 'function', fn: 'fn-e', action: 'scale-to-zero' })
      await r.requestRebake('fn-f')
      assert.deepEqual(await c.until(2), [
        { type: 'function', fn: 'fn-e', action: 'scale-to-zero' },
        { type: 'function', fn: 'fn-f', action: 'rebake' },
      ])
      await c.sub.close()
      await r.reserve('fn-e', 2, 'e2')
      await new Promise((res) => setTimeout(res, 50))
      assert.equal(c.events.length, 2)
    })

    test('heartbeats claim their subnet: an overlapping one of another live host is refused', async () => {
      const r = await impl.create()
      const t = Date.now()
      const a = { hostId: 'ha', at: t, pid: 1, functions: [], subnet: '10.213.0.0/16', address: '192.0.2.1' }
      assert.equal(await r.beat(a), undefined)
      // Another host on an overlapping subnet gets the holder back, and nothing is written.
      const b = { hostId: 'hb', at: t, pid: 2, functions: ['fn'], subnet: '10.213.128.0/17' }
      assert.deepEqual(await r.beat(b), a)
      assert.deepEqual(
        (await r.executors()).map((h) => h.hostId),
        ['ha'],
      )
      // The holder beats on; a disjoint subnet is taken; a heartbeat without one never conflicts.
      assert.equal(await r.beat({ ...a, at: t + 1 }), undefined)
      assert.equal(await r.beat({ ...b, subnet: '10.214.0.0/16' }), undefined)
      assert.equal(await r.beat({ hostId: 'hc', at: t, pid: 3, functions: [] }), undefined)
      // Executors on one network (one bridge, one lease dir) share a subnet.
      const onA = { ...b, hostId: 'ha-bench', subnet: '10.213.0.0/16', network: 'boot-1:net-1' }
      assert.deepEqual(await r.beat(onA), { ...a, at: t + 1 })
      assert.equal(await r.beat({ ...a, at: t + 2, network: 'boot-1:net-1' }), undefined)
      assert.equal(await r.beat(onA), undefined)
      const other = await r.beat({ ...onA, hostId: 'hx', network: 'boot-1:net-2' })
      assert.ok(other?.hostId === 'ha' || other?.hostId === 'ha-bench', JSON.stringify(other))
      // A holder silent for longer than EXECUTOR_FRESH_MS has given its subnet up.
      assert.equal(await r.beat({ ...onA, at: t - EXECUTOR_FRESH_MS - 1000 }), undefined)
      assert.equal(await r.beat({ ...a, at: t - EXECUTOR_FRESH_MS - 1000 }), undefined)
      assert.equal(
        await r.beat({ hostId: 'hd', at: t, pid: 4, functions: [], subnet: '10.213.0.0/24' }),
        undefined,
      )
      assert.deepEqual((await r.executors()).map((h) => h.hostId).sort(), [
        'ha',
        'ha-bench',
        'hb',
        'hc',
        'hd',
      ])
    })

    test('scaling estimates: none, saved, replaced, per function', async () => {
      const r = await impl.create()
      assert.equal(await r.scalingEstimates('fn-g'), undefined)
      await r.saveScalingEstimates('fn-g', { restoreMs: 190.5, serviceMs: 9, at: 100 })
      await r.saveScalingEstimates('fn-h', { serviceMs: 3, at: 101 })
      assert.deepEqual(await r.scalingEstimates('fn-g'), { restoreMs: 190.5, serviceMs: 9, at: 100 })
      await r.saveScalingEstimates('fn-g', { restoreMs: 200, serviceMs: 12, at: 102 })
      assert.deepEqual(await r.scalingEstimates('fn-g'), { restoreMs: 200, serviceMs: 12, at: 102 })
      assert.deepEqual(await r.scalingEstimates('fn-h'), { serviceMs: 3, at: 101 })
    })

    test('standby: reserved up to standby and maxInstances, frozen, claimed once, of its version only', async () => {
      const r = await impl.create()
      const c = await collect(r)
      const limits = { standby: 2, maxInstances: 3, version: 'v1' }
      const reserved = await Promise.all(
        Array.from({ length: 10 }, (_, i) => r.reserveStandby('sb', limits, `s${i}`, 'h1')),
      )
      assert.equal(reserved.filter(Boolean).length, 2, 'atomic: standby caps the frozen records')
      const ids = (await r.list('sb')).map((x) => x.id).sort()
      assert.equal(
        (await r.list('sb')).every((x) => x.state === 'frozen' && !x.address),
        true,
      )
      // Not claimable while it is being restored, and a second markFrozen is refused.
      assert.equal(await r.claimStandby('sb', ids[0]!), undefined)
      const info = {
        address: ADDR,
        runtime: 'lazy' as const,
        phases: PHASES,
        hostId: 'h1',
        memoryBytes: 12345678,
      }
      assert.equal(await r.markFrozen('sb', ids[0]!, info), true)
      assert.equal(await r.markFrozen('sb', ids[0]!, info), false)
      assert.equal(await r.markReady('sb', ids[0]!, ADDR, 'lazy', PHASES, 'h1'), false, 'only a claim thaws')
      const frozen = await r.get('sb', ids[0]!)
      assert.equal(frozen?.state, 'frozen')
      assert.equal(frozen?.memoryBytes, 12345678)
      assert.equal(frozen?.version, 'v1')
      assert.equal(typeof frozen?.frozenAt, 'number')
      // maxInstances counts frozen records: one more ordinary reservation fits, then none.
      assert.equal(await r.reserve('sb', 3, 'x1'), true)
      assert.equal(await r.reserve('sb', 3, 'x2'), false)
      // A claim for another version fails; of the right one, once only, even when raced.
      assert.equal(await r.claimStandby('sb', ids[0]!, 'v2'), undefined)
      const claims = await Promise.all(Array.from({ length: 5 }, () => r.claimStandby('sb', ids[0]!, 'v1')))
      const won = claims.filter((x) => x !== undefined)
      assert.equal(won.length, 1)
      assert.equal(won[0]?.state, 'ready')
      assert.deepEqual(won[0]?.address, ADDR)
      assert.equal(typeof won[0]?.thawedAt, 'number')
      // The frozen event carries the record; the claim publishes `ready` with it.
      const events = await c.until(5)
      const mine = events.filter((e) => e.type === 'instance' && e.id === ids[0])
      assert.deepEqual(
        mine.map((e) => (e.type === 'instance' ? [e.state, e.record?.state] : [])),
        [
          ['frozen', undefined],
          ['frozen', 'frozen'],
          ['ready', 'ready'],
        ],
      )
      await c.sub.close()
    })
  })
}

test('parseScalingEstimates keeps valid times only', () => {
  assert.deepEqual(parseScalingEstimates('{"restoreMs":190,"serviceMs":9,"at":5}'), {
    restoreMs: 190,
    serviceMs: 9,
    at: 5,
  })
  assert.deepEqual(parseScalingEstimates('{"restoreMs":190,"serviceMs":-1,"at":5}'), {
    restoreMs: 190,
    at: 5,
  })
  for (const bad of [
    null,
    '',
    'nope',
    '[]',
    '{"at":5}',
    '{"restoreMs":"1","at":5}',
    '{"restoreMs":1e999,"at":5}',
    '{"restoreMs":3}',
  ])
    assert.equal(parseScalingEstimates(bad), undefined, String(bad))
})

test('parseRegistryEvent keeps the record of a ready event only when it describes that instance', () => {
  const record = {
    id: 'i',
    fn: 'a',
    state: 'ready',
    hostId: 'h',
    createdAt: 1,
    address: { host: '10.213.0.5', port: 8080 },
  }
  const event = { type: 'instance', fn: 'a', id: 'i', state: 'ready' }
  assert.deepEqual(parseRegistryEvent(JSON.stringify({ ...event, record })), { ...event, record })
  for (const bad of [
    { ...record, id: 'other' },
    { ...record, fn: 'b' },
    { ...record, state: 'starting' },
    { ...record, address: { host: '10.213.0.5' } },
    'nope',
  ])
    assert.deepEqual(parseRegistryEvent(JSON.stringify({ ...event, record: bad })), event)
  assert.deepEqual(
    parseRegistryEvent(JSON.stringify({ ...event, state: 'gone', record })),
    { ...event, state: 'gone' },
    'only ready events carry one',
  )
})

test('parseRegistryEvent accepts contract events only', () => {
  assert.deepEqual(parseRegistryEvent('{"type":"instance","fn":"a","id":"i","state":"gone"}'), {
    type: 'instance',
    fn: 'a',
    id: 'i',
    state: 'gone',
  })
  for (const bad of [
    'nope',
    '{}',
    '{"type":"instance","fn":"a","id":"i","state":"weird"}',
    '{"type":"function","fn":"a","action":"x"}',
  ]) {
    assert.equal(parseRegistryEvent(bad), undefined, bad)
  }
})
