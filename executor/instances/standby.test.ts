import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import type { RestoreJobData } from '../../shared/contracts.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { manifestSchema } from '../../shared/manifest.ts'
import { createFakeRegistry, type FakeRegistry } from '../../shared/registry-fake.ts'
import type { StartedInstance } from '../runtimes/runtimes.ts'
import type { InstanceManager } from './instances.ts'
import { createStandbyKeeper } from './standby.ts'

const fnDef = (name: string, standby: number, version?: string): FunctionDef => ({
  name,
  dir: `/functions/${name}`,
  manifestFile: `/functions/${name}/function.yaml`,
  manifest: manifestSchema.parse({ name, port: 8080, scaling: { standby, maxInstances: 3 } }),
  ...(version ? { version } : {}),
})

const PHASES = { queueMs: 0, sandboxMs: 1, restoreMs: 2, readyMs: 3 }

/** An instance manager whose standby starts record a frozen instance, as instances.ts does. */
function fakeInstances(registry: FakeRegistry, fns: () => FunctionDef[]) {
  const started: RestoreJobData[] = []
  const live = new Map<string, StartedInstance>()
  const frozen = new Set<string>()
  const thawed: string[] = []
  const stopped: { id: string; reason: string }[] = []
  const manager: Pick<InstanceManager, 'start' | 'stop' | 'live' | 'frozen' | 'thaw'> = {
    async start(job) {
      started.push(job)
      await new Promise((r) => setTimeout(r, 2))
      const address = { host: '10.213.0.9', port: 8080 }
      const version = fns().find((f) => f.name === job.fn)?.version
      const info = { address, runtime: 'lazy' as const, phases: PHASES, hostId: 'h1', memoryBytes: 1 }
      assert.ok(
        await registry.markFrozen(job.fn, job.instanceId, { ...info, ...(version ? { version } : {}) }),
      )
      const inst = { id: job.instanceId, fn: job.fn, runtime: 'lazy', ip: address.host, port: 8080 }
      live.set(job.instanceId, {
        ...inst,
        pooled: false,
        phases: PHASES,
        snapshotBytes: 1,
      } as StartedInstance)
      frozen.add(job.instanceId)
      return {
        instanceId: job.instanceId,
        fn: job.fn,
        address,
        hostId: 'h1',
        runtime: 'lazy',
        pooled: false,
        phases: PHASES,
        snapshotBytes: 1,
      }
    },
    async stop(id, reason) {
      stopped.push({ id, reason })
      live.delete(id)
      frozen.delete(id)
      const fn = [...(await registry.listAll())].find((r) => r.id === id)?.fn
      if (fn) await registry.remove(fn, id)
    },
    live: () => [...live.values()],
    frozen: () => [...frozen],
    async thaw(id) {
      if (!frozen.delete(id)) return false
      thawed.push(id)
      return true
    },
  }
  return { manager, started, thawed, stopped }
}

function keeperOn(registry: FakeRegistry, list: { fns: FunctionDef[] }) {
  const instances = fakeInstances(registry, () => list.fns)
  const keeper = createStandbyKeeper({
    instances: instances.manager,
    registry,
    functions: () => list.fns,
    hostId: 'h1',
    now: Date.now,
    logger: createSilentLogger(),
  })
  return { keeper, instances }
}

const frozenOf = async (registry: FakeRegistry, fn: string) =>
  (await registry.list(fn)).filter((r) => r.state === 'frozen')

describe('standby keeper', () => {
  test('keeps scaling.standby instances frozen, one restore per function per tick', async () => {
    const registry = createFakeRegistry()
    const { keeper, instances } = keeperOn(registry, { fns: [fnDef('sb', 2), fnDef('none', 0)] })
    for (let i = 0; i < 4; i++) {
      await keeper.tick()
      await keeper.settled()
    }
    assert.equal((await frozenOf(registry, 'sb')).length, 2)
    assert.equal(instances.started.length, 2)
    assert.ok(instances.started.every((j) => j.reason === 'standby' && j.fn === 'sb'))
    assert.equal((await registry.list('none')).length, 0)
  })

  test('a claim thaws the instance and restores a replacement at once', async () => {
    const registry = createFakeRegistry()
    const { keeper, instances } = keeperOn(registry, { fns: [fnDef('sb', 1)] })
    const sub = await registry.subscribe({ onEvent: (e) => keeper.onEvent(e) })
    await keeper.tick()
    await keeper.settled()
    const [first] = await frozenOf(registry, 'sb')
    assert.ok(first)
    assert.ok(await registry.claimStandby('sb', first.id))
    const deadline = Date.now() + 2000
    while ((await frozenOf(registry, 'sb')).filter((r) => r.address).length < 1 || !instances.thawed.length) {
      assert.ok(Date.now() < deadline, 'thawed and replaced')
      await new Promise((r) => setTimeout(r, 5))
    }
    assert.deepEqual(instances.thawed, [first.id])
    assert.equal(instances.started.length, 2, 'the replacement came without a tick')
    await keeper.settled()
    await sub.close()
  })

  test('frozen instances of an old version, or past the count, are stopped', async () => {
    const registry = createFakeRegistry()
    const list = { fns: [fnDef('ver', 2, 'v1')] }
    const { keeper, instances } = keeperOn(registry, list)
    for (let i = 0; i < 2; i++) {
      await keeper.tick()
      await keeper.settled()
    }
    const old = (await frozenOf(registry, 'ver')).map((r) => r.id).sort()
    assert.equal(old.length, 2)
    // Deploy v2 with standby 1: both v1 instances go, one v2 instance comes.
    list.fns = [fnDef('ver', 1, 'v2')]
    await keeper.tick()
    await keeper.settled()
    assert.deepEqual(instances.stopped.map((s) => s.id).sort(), old)
    assert.ok(instances.stopped.every((s) => s.reason === 'standby: old version'))
    const now = await frozenOf(registry, 'ver')
    assert.deepEqual(
      now.map((r) => r.version),
      ['v2'],
    )
    // Lowered to 0: the v2 one goes too (past the count), none is restored.
    list.fns = [fnDef('ver', 0, 'v2')]
    await keeper.tick()
    await keeper.settled()
    assert.equal((await frozenOf(registry, 'ver')).length, 0)
    assert.equal(instances.stopped.at(-1)?.reason, 'standby: beyond scaling.standby')
  })

  test('a deleted function loses its frozen instances', async () => {
    const registry = createFakeRegistry()
    const list = { fns: [fnDef('del', 1)] }
    const { keeper, instances } = keeperOn(registry, list)
    await keeper.tick()
    await keeper.settled()
    list.fns = []
    await keeper.tick()
    assert.deepEqual(
      instances.stopped.map((s) => s.reason),
      ['standby: function gone'],
    )
    assert.equal((await registry.list('del')).length, 0)
  })

  test('events for instances that are not frozen here are ignored', async () => {
    const registry = createFakeRegistry()
    const { keeper, instances } = keeperOn(registry, { fns: [fnDef('sb', 1)] })
    keeper.onEvent({ type: 'instance', fn: 'sb', id: 'elsewhere', state: 'ready' })
    keeper.onEvent({ type: 'function', fn: 'sb', action: 'rebake' })
    await new Promise((r) => setTimeout(r, 10))
    assert.equal(instances.thawed.length, 0)
    assert.equal(instances.started.length, 0)
  })
})
