import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import type { RestoreJobData, RestoreJobResult } from '../shared/contracts.ts'
import type { FunctionDef } from '../shared/functions.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { manifestSchema } from '../shared/manifest.ts'
import { createFakeRegistry, type FakeRegistry } from '../shared/registry-fake.ts'
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
  const manager: Pick<InstanceManager, 'start' | 'live' | 'dead' | 'stop'> = {
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
    dead: () => Promise.resolve([]),
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
