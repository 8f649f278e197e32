import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import type { RestoreJobData, RuntimeKind } from '../../shared/contracts.ts'
import { InitlessError } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { createFakeRegistry, type FakeRegistry } from '../../shared/registry-fake.ts'
import { createFakeCriu, type FakeCriu } from '../adapters/criu-fake.ts'
import { createFakeDocker, type FakeDocker } from '../adapters/docker-fake.ts'
import { isProcessAlive } from '../adapters/process.ts'
import { createFakeRunc } from '../adapters/runc-fake.ts'
import { FAKE_IMAGE, fakeSnapshot, startFakeFunction, type FakeFunction } from '../runtimes/function-fake.ts'
import { createBootRuntime, createRuncRestoreRuntime } from '../runtimes/runtimes.ts'
import { createFakeSandboxes, type FakeSandboxes } from '../sandbox/sandbox-fake.ts'
import type { Snapshot } from '../snapshots/snapshot-store.ts'
import { createInstanceManager, type InstanceManager } from './instances.ts'

const MiB = 1024 * 1024
const HOST = 'h1'
/** The recheck after a start, shortened for these tests. */
const RECHECK_DELAY_MS = 300

let fn: FakeFunction
let root: string
before(async () => {
  fn = await startFakeFunction()
  root = await mkdtemp(join(tmpdir(), 'initless-instances-'))
})
after(async () => {
  await fn.close()
  await rm(root, { recursive: true, force: true })
})

interface World {
  readonly manager: InstanceManager
  readonly registry: FakeRegistry
  readonly criu: FakeCriu
  readonly docker: FakeDocker
  readonly sandboxes: FakeSandboxes
  readonly def: FunctionDef
  readonly bakes: number[]
  readonly broken: string[]
  /** Make the snapshot with this key fail its checksums from now on. */
  corrupt(key: string): void
  start(opts?: Partial<RestoreJobData>): ReturnType<InstanceManager['start']>
  /** Serve `def` from now on (a live change of its manifest, as the function registry makes). */
  redefine(def: FunctionDef): void
}

interface WorldOptions {
  readonly policy?: 'auto' | 'lazy' | 'eager' | 'boot'
  readonly snapshotBytes?: number
  readonly poolSize?: number
  readonly failRestore?: boolean
  readonly failPrepare?: boolean
  /** The first snapshot's checksums do not match (restores and scrubs find it corrupt). */
  readonly corrupt?: boolean
  /** The first bake finds its snapshot on disk instead of making it. */
  readonly found?: boolean
}

let nextId = 1

/** An instance manager over the real runtimes, wired to fake runc, CRIU, Docker and sandboxes. */
function world(o: WorldOptions = {}): World {
  const registry = createFakeRegistry()
  const criu = createFakeCriu({
    restore: () =>
      o.failRestore ? new InitlessError('ERR_COMMAND_FAILED', 'criu restore: exit 1') : undefined,
  })
  const runc = createFakeRunc()
  const docker = createFakeDocker()
  const sandboxes = createFakeSandboxes({
    root,
    fail: {
      prepare: () =>
        o.failPrepare ? new InitlessError('ERR_SANDBOX_SETUP_FAILED', 'mount: overlay') : undefined,
    },
  })
  const def = fn.def({ policy: o.policy ?? 'auto', poolSize: o.poolSize ?? 0 })
  let current = def
  const bakes: number[] = []
  const broken: string[] = []
  let snapshot: Snapshot = fakeSnapshot(def.name, o.snapshotBytes ?? MiB)
  const corrupted = new Set<string>(o.corrupt ? ['k1'] : [])
  const verify = async (s: Snapshot) => {
    if (corrupted.has(s.meta.key))
      throw new InitlessError(
        'ERR_SNAPSHOT_CORRUPT',
        `snapshot ${s.meta.key} is corrupt: pages-1.img mismatch`,
      )
  }
  const restore = { runc: runc.runc, criu: criu.criu, sandboxes: sandboxes.sandboxes, verify }
  const manager = createInstanceManager({
    hostId: HOST,
    stateDir: root,
    lazyThreshold: 64 * MiB,
    functions: () => [current],
    registry,
    builder: { build: async (f) => ({ fn: f.name, tag: 't', image: FAKE_IMAGE, built: false, ms: 1 }) },
    baker: {
      async bake() {
        bakes.push(Date.now())
        if (bakes.length > 1) snapshot = fakeSnapshot(def.name, snapshot.meta.sizeBytes, `k${bakes.length}`)
        return { snapshot, baked: !(o.found && bakes.length === 1) }
      },
    },
    store: {
      usable: async (s) => !broken.includes(s.meta.key),
      markBroken: async (s) => void broken.push(s.meta.key),
      verify,
      scrub: verify,
    },
    docker: docker.docker,
    sandboxes: sandboxes.sandboxes,
    runtimes: {
      lazy: createRuncRestoreRuntime({ ...restore, lazy: true }),
      eager: createRuncRestoreRuntime({ ...restore, lazy: false }),
      boot: createBootRuntime({ docker: docker.docker }),
    },
    logger: createSilentLogger(),
    recheckDelayMs: RECHECK_DELAY_MS,
  })
  return {
    manager,
    registry,
    criu,
    docker,
    sandboxes,
    def,
    bakes,
    broken,
    redefine: (d) => void (current = d),
    corrupt: (key) => void corrupted.add(key),
    async start(job = {}) {
      const instanceId = `i${nextId++}`
      assert.ok(await registry.reserve(def.name, 5, instanceId, HOST))
      return manager.start({
        fn: def.name,
        instanceId,
        traceId: 't',
        enqueuedAt: Date.now(),
        reason: 'demand',
        ...job,
      })
    },
  }
}

interface StartCase {
  readonly name: string
  readonly world: WorldOptions
  readonly job?: Partial<RestoreJobData>
  readonly runtime?: RuntimeKind
  readonly code?: string
  /** The snapshot was marked broken and baked again. */
  readonly fellBack?: boolean
}

const startCases: StartCase[] = [
  { name: 'auto, small snapshot: eager', world: {}, runtime: 'eager' },
  { name: 'auto, large snapshot: lazy', world: { snapshotBytes: 100 * MiB }, runtime: 'lazy' },
  { name: 'policy lazy on a small snapshot: lazy', world: { policy: 'lazy' }, runtime: 'lazy' },
  { name: 'policy boot: boot, nothing baked', world: { policy: 'boot' }, runtime: 'boot' },
  { name: 'the job asks for boot', world: {}, job: { runtime: 'boot' }, runtime: 'boot' },
  {
    name: 'restore fails: boot serves, snapshot marked broken and baked again',
    world: { failRestore: true },
    runtime: 'boot',
    fellBack: true,
  },
  {
    name: 'sandbox prepare fails: boot serves, snapshot marked broken',
    world: { failPrepare: true, snapshotBytes: 100 * MiB },
    runtime: 'boot',
    fellBack: true,
  },
  {
    name: 'corrupt snapshot: boot serves, snapshot marked broken and baked again',
    world: { corrupt: true, snapshotBytes: 100 * MiB },
    runtime: 'boot',
    fellBack: true,
  },
  {
    name: 'restore fails on the runtime the job asked for: no fallback',
    world: { failRestore: true },
    job: { runtime: 'eager' },
    code: 'ERR_RESTORE_FAILED',
  },
  {
    name: 'the docker runtime is not served: fails',
    world: {},
    job: { runtime: 'docker' },
    code: 'ERR_RESTORE_FAILED',
  },
]

describe('instance manager: starting an instance', () => {
  for (const c of startCases) {
    test(c.name, async () => {
      const w = world(c.world)
      try {
        const started = w.start(c.job)
        if (c.code) {
          await assert.rejects(started, (err: InitlessError) => err.code === c.code)
          assert.deepEqual(w.manager.live(), [])
          assert.deepEqual(w.sandboxes.live(), [])
          assert.deepEqual(w.broken, [], 'a runtime the job asked for never marks the snapshot')
          return
        }
        const result = await started
        assert.equal(result.runtime, c.runtime)
        assert.equal(result.hostId, HOST)
        assert.deepEqual(result.address, { host: '127.0.0.1', port: fn.port })
        const record = (await w.registry.list(w.def.name)).find((r) => r.id === result.instanceId)
        assert.equal(record?.state, 'ready')
        assert.equal(record?.runtime, c.runtime)
        assert.deepEqual(
          w.manager.live().map((i) => i.id),
          [result.instanceId],
        )
        assert.equal(w.bakes.length, c.world.policy === 'boot' ? 0 : c.fellBack ? 2 : 1)
        assert.deepEqual(w.broken, c.fellBack ? ['k1'] : [])
        if (c.fellBack) assert.deepEqual(w.sandboxes.live(), [], 'the failed restore left no sandbox')
      } finally {
        await w.manager.stopAll('test over')
        w.criu.cleanup()
      }
    })
  }
})

describe('instance manager: pools, stops and withdrawn reservations', () => {
  test('a pool is filled to its size; a start takes from it and it is refilled', async () => {
    const w = world({ poolSize: 1, snapshotBytes: 100 * MiB })
    try {
      await w.manager.fillPools()
      assert.equal(w.manager.poolSize(w.def.name), 1)
      assert.equal(w.criu.daemons.length, 1, 'a lazy pool starts the daemon ahead')
      const result = await w.start()
      assert.equal(result.pooled, true)
      assert.equal(result.runtime, 'lazy')
      for (let i = 0; i < 100 && w.manager.poolSize(w.def.name) < 1; i++)
        await new Promise((r) => setTimeout(r, 10))
      assert.equal(w.manager.poolSize(w.def.name), 1, 'refilled after the start')
      const noPool = await w.start({ noPool: true })
      assert.equal(noPool.pooled, false)
      assert.equal(w.manager.poolSize(w.def.name), 1, 'a noPool start leaves the pool alone')
    } finally {
      await w.manager.stopAll('test over')
      w.criu.cleanup()
    }
    assert.deepEqual(w.sandboxes.live(), [], 'stopAll releases instances and pooled sandboxes')
  })

  test('a live change of network.egress empties the pool: no sandbox serves the old policy', async () => {
    const w = world({ poolSize: 1, snapshotBytes: 100 * MiB })
    try {
      await w.manager.fillPools()
      assert.equal(w.manager.poolSize(w.def.name), 1)
      assert.equal(w.sandboxes.requests.at(-1)?.egress, 'allow')
      w.redefine({ ...w.def, manifest: { ...w.def.manifest, network: { egress: 'deny' } } })
      const result = await w.start()
      assert.equal(result.pooled, false, 'the sandbox made for egress allow is not taken')
      assert.equal(w.sandboxes.requests.at(-1)?.egress, 'deny')
      await w.manager.fillPools()
      assert.equal(w.manager.poolSize(w.def.name), 1)
      assert.equal(w.sandboxes.requests.at(-1)?.egress, 'deny', 'refilled under the new policy')
      assert.equal((await w.start()).pooled, true)
    } finally {
      await w.manager.stopAll('test over')
      w.criu.cleanup()
    }
    assert.deepEqual(w.sandboxes.live(), [], 'the old pooled sandbox was released too')
  })

  test('stop releases the sandbox, the lazy-pages daemon and the registry record', async () => {
    const w = world({ snapshotBytes: 100 * MiB })
    try {
      const result = await w.start()
      const daemon = w.manager.live()[0]!.lazyDaemon!
      assert.ok(isProcessAlive(daemon.pid))
      await w.manager.stop(result.instanceId, 'test')
      assert.deepEqual(w.manager.live(), [])
      assert.deepEqual(w.sandboxes.live(), [])
      assert.deepEqual(w.sandboxes.destroyed, [result.instanceId])
      await Promise.race([daemon.exited, new Promise((r) => setTimeout(r, 2000))])
      assert.equal(isProcessAlive(daemon.pid), false, 'the lazy-pages daemon was killed')
      assert.deepEqual(await w.registry.list(w.def.name), [])
      await w.manager.stop(result.instanceId, 'again') // idempotent
    } finally {
      w.criu.cleanup()
    }
  })

  test('a boot instance is removed from Docker when stopped', async () => {
    const w = world({ policy: 'boot' })
    const result = await w.start()
    assert.equal(w.docker.containers.size, 1)
    assert.deepEqual(await w.manager.dead(), [])
    await w.manager.stop(result.instanceId, 'test')
    assert.equal(w.docker.containers.size, 0)
  })

  test('a withdrawn reservation: the instance is stopped and the job fails', async () => {
    const w = world()
    const instanceId = 'withdrawn-1'
    // No reservation: markReady finds none, as when the gateway withdrew it while restoring.
    const started = w.manager.start({
      fn: w.def.name,
      instanceId,
      traceId: 't',
      enqueuedAt: Date.now(),
      reason: 'demand',
    })
    await assert.rejects(started, (err: InitlessError) => err.code === 'ERR_INSTANCE_DIED')
    assert.deepEqual(w.manager.live(), [])
    assert.deepEqual(w.sandboxes.live(), [])
  })

  test('an unknown function fails with ERR_FUNCTION_NOT_FOUND', async () => {
    const w = world()
    await assert.rejects(
      w.manager.start({
        fn: 'nope',
        instanceId: 'x',
        traceId: 't',
        enqueuedAt: Date.now(),
        reason: 'demand',
      }),
      (err: InitlessError) => err.code === 'ERR_FUNCTION_NOT_FOUND',
    )
  })
})

async function eventually(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10))
  assert.ok(check(), what)
}

describe('instance manager: corrupt snapshots', () => {
  test('a corrupt snapshot found on disk is marked broken and baked again before any start', async () => {
    const w = world({ corrupt: true, found: true })
    const prep = await w.manager.prepare(w.def)
    assert.equal(prep.snapshot?.meta.key, 'k1')
    await eventually(() => w.bakes.length === 2, 'baked again')
    assert.deepEqual(w.broken, ['k1'])
    const result = await w.start()
    assert.equal(result.runtime, 'eager', 'the new snapshot restores')
    assert.deepEqual(w.broken, ['k1'])
    await w.manager.stopAll('test over')
  })

  test('an intact snapshot found on disk is used as is', async () => {
    const w = world({ found: true })
    await w.manager.prepare(w.def)
    await new Promise((r) => setTimeout(r, 50))
    assert.equal(w.bakes.length, 1, 'not baked again')
    assert.deepEqual(w.broken, [])
    const result = await w.start()
    assert.equal(result.runtime, 'eager')
    await w.manager.stopAll('test over')
  })

  test('the scrub marks a snapshot that went corrupt broken; the re-bake is scrubbed next', async () => {
    const w = world()
    await w.manager.prepare(w.def)
    assert.deepEqual(
      (await w.manager.scrub()).map((r) => [r.fn, r.ok]),
      [[w.def.name, true]],
    )
    w.corrupt('k1')
    const [found] = await w.manager.scrub()
    assert.equal(found?.ok, false)
    assert.match(found?.problem ?? '', /corrupt/)
    assert.deepEqual(w.broken, ['k1'])
    await eventually(() => w.bakes.length === 2, 'baked again')
    // Wait for the re-bake's preparation to become the current one.
    await w.manager.prepare(w.def)
    assert.deepEqual(
      (await w.manager.scrub()).map((r) => [r.fn, r.ok]),
      [[w.def.name, true]],
    )
    assert.deepEqual(w.broken, ['k1'])
  })
})

describe('instance manager: rechecking a function after its starts', () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

  test('starts recheck their function once, after the delay, never while an instance comes up', async () => {
    const w = world({ policy: 'eager' })
    try {
      await w.manager.prepare(w.def)
      assert.equal(w.bakes.length, 1)
      const [a, b] = await Promise.all([w.start(), w.start()])
      assert.equal(a.runtime, 'eager')
      assert.equal(b.runtime, 'eager')
      await sleep(50)
      assert.equal(w.bakes.length, 1, 'no recheck right after the starts')
      await eventually(() => w.bakes.length === 2, 'rechecked after the delay')
      await sleep(RECHECK_DELAY_MS + 200)
      assert.equal(w.bakes.length, 2, 'two starts, one recheck')
    } finally {
      await w.manager.stopAll('test over')
    }
  })

  test('a pending recheck prepares the definition started last', async () => {
    const w = world({ policy: 'eager' })
    try {
      await w.manager.prepare(w.def)
      await w.start() // a recheck of the first definition is pending
      w.redefine({ ...w.def })
      await w.start() // the new definition is prepared afresh: no recheck of its own
      assert.equal(w.bakes.length, 2)
      await w.start() // its recheck joins the pending one, now for the new definition
      await eventually(() => w.bakes.length === 3, 'rechecked the definition started last')
    } finally {
      await w.manager.stopAll('test over')
    }
  })

  test('no recheck for a definition replaced since its start', async () => {
    const w = world({ policy: 'eager' })
    try {
      await w.manager.prepare(w.def)
      await w.start()
      w.redefine({ ...w.def })
      await sleep(RECHECK_DELAY_MS + 200)
      assert.equal(w.bakes.length, 1)
    } finally {
      await w.manager.stopAll('test over')
    }
  })

  test('a recheck still pending at shutdown never runs, nor one a start after it would schedule', async () => {
    const w = world({ policy: 'eager' })
    await w.manager.prepare(w.def)
    await w.start()
    await w.manager.stopAll('test over')
    await w.start() // as a start still running at shutdown ends
    await sleep(RECHECK_DELAY_MS + 200)
    assert.equal(w.bakes.length, 1)
    await w.manager.stopAll('test over')
  })
})
