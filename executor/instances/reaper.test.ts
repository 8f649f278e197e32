import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { HOST_GONE_MS, type RestoreJobData, type RestoreJobResult } from '../../shared/contracts.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { manifestSchema } from '../../shared/manifest.ts'
import { createFakeInstanceDeaths } from '../../shared/instance-deaths-fake.ts'
import { createFakeRegistry, type FakeRegistry } from '../../shared/registry-fake.ts'
import type { InstanceManager } from './instances.ts'
import { createReaper } from './reaper.ts'

const fnDef = (name: string, minInstances: number, maxInstances = 5): FunctionDef => ({
  name,
  dir: `/functions/${name}`,
  manifestFile: `/functions/${name}/function.yaml`,
  manifest: manifestSchema.parse({ name, port: 8080, scaling: { minInstances, maxInstances } }),
})

/** An instance manager whose starts mark the reserved instance ready, or fail while `failing`. */
function fakeInstances(registry: FakeRegistry, hostId: string) {
  const started: RestoreJobData[] = []
  let failing = false
  const manager: Pick<InstanceManager, 'start' | 'live' | 'ended' | 'stop'> = {
    async start(job) {
      started.push(job)
      await new Promise((r) => setTimeout(r, 5))
      if (failing) throw new Error('criu restore exited with 1')
      const address = { host: '10.213.0.9', port: 8080 }
      const phases = { queueMs: 0, sandboxMs: 1, restoreMs: 2, readyMs: 3 }
      assert.ok(await registry.markReady(job.fn, job.instanceId, address, 'lazy', phases, hostId))
      const result: RestoreJobResult = {
        instanceId: job.instanceId,
        fn: job.fn,
        address,
        hostId,
        runtime: 'lazy',
        pooled: false,
        phases,
        snapshotBytes: 1,
      }
      return result
    },
    live: () => [],
    ended: () => Promise.resolve([]),
    stop: () => Promise.resolve(),
  }
  return {
    manager: manager as InstanceManager,
    started,
    setFailing: (v: boolean) => (failing = v),
  }
}

function reaperOn(registry: FakeRegistry, fns: FunctionDef[], hostId: string) {
  const instances = fakeInstances(registry, hostId)
  const reaper = createReaper({
    instances: instances.manager,
    registry,
    functions: () => fns,
    now: Date.now,
    logger: createSilentLogger(),
    hostId,
  })
  return { reaper, instances }
}

describe('reaper: minInstances', () => {
  test('tops a function up to its minimum, one restore per tick, then stops', async () => {
    const registry = createFakeRegistry()
    const { reaper, instances } = reaperOn(registry, [fnDef('min2', 2), fnDef('none', 0)], 'h1')
    for (let i = 0; i < 4; i++) {
      await reaper.tick()
      await reaper.settled()
    }
    const records = await registry.list('min2')
    assert.equal(records.length, 2)
    assert.ok(records.every((r) => r.state === 'ready' && r.hostId === 'h1'))
    assert.deepEqual(await registry.list('none'), [])
    assert.equal(instances.started.length, 2)
    assert.ok(instances.started.every((j) => j.reason === 'min-instances' && j.fn === 'min2'))
  })

  test('a failed start gives its reservation back and is retried on a later tick', async () => {
    const registry = createFakeRegistry()
    const { reaper, instances } = reaperOn(registry, [fnDef('flaky', 1)], 'h1')
    instances.setFailing(true)
    await reaper.tick()
    await reaper.settled()
    assert.deepEqual(await registry.list('flaky'), [], 'reservation withdrawn')
    instances.setFailing(false)
    await reaper.tick()
    await reaper.settled()
    assert.equal((await registry.list('flaky')).length, 1)
    assert.equal(instances.started.length, 2)
  })

  test('executors on several hosts seeing the same shortfall never start more than the minimum', async () => {
    const registry = createFakeRegistry()
    const fns = [fnDef('shared', 3)]
    const hosts = ['h1', 'h2', 'h3', 'h4'].map((h) => reaperOn(registry, fns, h))
    for (let i = 0; i < 3; i++) {
      await Promise.all(hosts.map((h) => h.reaper.tick()))
      await Promise.all(hosts.map((h) => h.reaper.settled()))
    }
    assert.equal((await registry.list('shared')).length, 3)
    assert.equal(
      hosts.reduce((n, h) => n + h.instances.started.length, 0),
      3,
    )
  })

  test('instances that are there already, starting or ready, count toward the minimum', async () => {
    const registry = createFakeRegistry()
    await registry.reserve('busy', 5, 'busy-demand-1', 'h9')
    const { reaper, instances } = reaperOn(registry, [fnDef('busy', 1)], 'h1')
    await reaper.tick()
    await reaper.settled()
    assert.equal(instances.started.length, 0)
  })
})

type StartedInstance = ReturnType<InstanceManager['live']>[number]

/** A reaper on `hostId` whose instance manager has `ids` live (of function 'f'), recording stops. */
function liveOn(registry: FakeRegistry, hostId: string, fns: FunctionDef[], ids: string[]) {
  const live = ids.map((id) => ({ id, fn: 'f' }) as StartedInstance)
  const stops: string[] = []
  const manager = {
    live: () => live.filter((i) => !stops.includes(i.id)),
    ended: () => Promise.resolve([]),
    stop: (id: string) => {
      stops.push(id)
      return Promise.resolve()
    },
  } as Partial<InstanceManager> as InstanceManager
  const reaper = createReaper({
    instances: manager,
    registry,
    functions: () => fns,
    now: Date.now,
    logger: createSilentLogger(),
    hostId,
  })
  return { reaper, live, stops }
}

describe('reaper: the registry as the record of what runs', () => {
  const ADDRESS = { host: '10.213.0.9', port: 8080 }
  const PHASES = { queueMs: 0, sandboxMs: 1, restoreMs: 2, readyMs: 3 }
  async function ready(registry: FakeRegistry, fn: string, id: string, hostId: string) {
    assert.ok(await registry.reserve(fn, 10, id, hostId))
    assert.ok(await registry.markReady(fn, id, ADDRESS, 'lazy', PHASES, hostId))
  }

  test('a live instance whose record is gone is stopped; the others are left alone', async () => {
    const registry = createFakeRegistry()
    await ready(registry, 'f', 'kept', 'h1')
    await ready(registry, 'f', 'dropped', 'h1')
    await registry.touch('f', 'kept', Date.now())
    await registry.touch('f', 'dropped', Date.now())
    await registry.remove('f', 'dropped') // by another host, while this one was out of reach
    const { reaper, live, stops } = liveOn(registry, 'h1', [fnDef('f', 0)], ['kept', 'dropped'])
    assert.deepEqual(await reaper.tick(), [{ id: 'dropped', reason: 'unregistered' }])
    assert.deepEqual(stops, ['dropped'])
    // Redis unreachable: nothing is judged on missing data.
    registry.setAvailable(false)
    live.push({ id: 'unknown', fn: 'f' } as StartedInstance)
    assert.deepEqual(await reaper.tick(), [])
  })

  test('an instance that died or hit a limit is stopped, its reason recorded first', async () => {
    const registry = createFakeRegistry()
    await ready(registry, 'f', 'bomb', 'h1')
    const deaths = createFakeInstanceDeaths()
    const stops: { id: string; why: string; recordedFirst: boolean }[] = []
    const bomb = { id: 'bomb', fn: 'f' } as StartedInstance
    const manager = {
      live: () => [],
      ended: () =>
        Promise.resolve(
          stops.length
            ? []
            : [{ instance: bomb, ending: { reason: 'pids-limit' as const, detail: 'forks' } }],
        ),
      stop: (id: string, why: string) => {
        stops.push({ id, why, recordedFirst: deaths.recorded.some((d) => d.id === id) })
        return Promise.resolve()
      },
    } as Partial<InstanceManager> as InstanceManager
    const reaper = createReaper({
      instances: manager,
      registry,
      deaths,
      functions: () => [fnDef('f', 0)],
      now: () => 42,
      logger: createSilentLogger(),
      hostId: 'h1',
    })
    assert.deepEqual(await reaper.tick(), [{ id: 'bomb', reason: 'dead' }])
    assert.deepEqual(stops, [{ id: 'bomb', why: 'pids-limit', recordedFirst: true }])
    assert.deepEqual(deaths.recorded, [
      { id: 'bomb', fn: 'f', reason: 'pids-limit', detail: 'forks', at: 42 },
    ])
    assert.deepEqual(await deaths.counts(), [{ fn: 'f', reason: 'pids-limit', count: 1 }])
  })

  test('minInstances over several hosts: of two idle instances one is stopped, by its own host', async () => {
    const registry = createFakeRegistry()
    await ready(registry, 'f', 'on-h1', 'h1')
    await ready(registry, 'f', 'on-h2', 'h2')
    const hourAgo = Date.now() - 3_600_000
    await registry.touch('f', 'on-h1', hourAgo) // the least recently used
    await registry.touch('f', 'on-h2', hourAgo + 1_000)
    const fns = [fnDef('f', 1)]
    const h1 = liveOn(registry, 'h1', fns, ['on-h1'])
    const h2 = liveOn(registry, 'h2', fns, ['on-h2'])
    // Both look at the same registry before either stops anything.
    const ticks = await Promise.all([h1.reaper.tick(), h2.reaper.tick()])
    assert.deepEqual(ticks, [[{ id: 'on-h1', reason: 'idle' }], []])
    await registry.remove('f', 'on-h1') // as instances.stop does
    assert.deepEqual(await h2.reaper.tick(), [], 'the minimum stays')
    assert.deepEqual(h2.stops, [])
  })

  test('records of a host silent for HOST_GONE_MS go, once this host has been heard as long', async () => {
    let clock = 1_800_000_000_000
    const registry = createFakeRegistry({ now: () => clock })
    await ready(registry, 'f', 'on-b', 'host-b')
    await registry.reserve('f', 10, 'b-starting', 'host-b')
    await ready(registry, 'f', 'on-a', 'host-a')
    await ready(registry, 'g', 'on-c', 'host-c')
    const t0 = clock
    await registry.beat({ hostId: 'host-b', at: t0, pid: 2, functions: ['f', 'g'] })
    clock += HOST_GONE_MS + 1_000
    await registry.beat({ hostId: 'host-a', at: clock, pid: 1, functions: ['f', 'g'] })
    await registry.beat({ hostId: 'host-c', at: clock, pid: 3, functions: ['f', 'g'] })
    let since: number | undefined = clock - 5_000
    const reaper = createReaper({
      instances: fakeInstances(registry, 'host-a').manager,
      registry,
      functions: () => [],
      now: () => clock,
      logger: createSilentLogger(),
      hostId: 'host-a',
      beatingSince: () => since,
    })
    const ids = async () => (await registry.listAll()).map((r) => r.id).sort()
    const all = ['b-starting', 'on-a', 'on-b', 'on-c']
    // This host has been heard for 5 s only (Redis may just be back): host B is not judged yet.
    await reaper.tick()
    assert.deepEqual(await ids(), all)
    since = undefined // its last heartbeat failed
    await reaper.tick()
    assert.deepEqual(await ids(), all)
    since = clock - HOST_GONE_MS
    await reaper.tick()
    // B's ready instance goes; its reservation is left to the stuck-reservation rule.
    assert.deepEqual(await ids(), ['b-starting', 'on-a', 'on-c'])
    assert.deepEqual(
      registry.events
        .filter((e) => e.type === 'instance' && e.state === 'gone')
        .map((e) => e.type === 'instance' && e.id),
      ['on-b'],
    )
  })
})
