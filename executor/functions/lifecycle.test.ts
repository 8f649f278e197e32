import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { createFakeFunctionRegistry } from '../../shared/function-registry-fake.ts'
import type { FunctionVersion } from '../../shared/function-registry.ts'
import { createFunctionWatcher } from '../../shared/function-watcher.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { parseManifest } from '../../shared/manifest.ts'
import { createFakeRegistry } from '../../shared/registry-fake.ts'
import { createLifecycle } from './lifecycle.ts'
import { FAKE_IMAGE } from '../adapters/docker-fake.ts'
import type { FunctionSource } from './function-source.ts'
import type { StartedInstance } from '../runtimes/runtimes.ts'
import type { Sandbox } from '../sandbox/sandbox.ts'
import type { SnapshotIdentity } from '../snapshots/snapshot-store.ts'

const MANIFEST = parseManifest('port: 8080\ntimeouts:\n  request: 400ms\n', 'hello/function.yaml', 'hello')
const PHASES = { queueMs: 0, sandboxMs: 0, restoreMs: 1, readyMs: 1 }
const version = (id: string, createdAt: number): FunctionVersion => ({
  version: id,
  manifest: MANIFEST,
  state: 'ready',
  createdAt,
  contextBytes: 1,
  image: {
    tag: `initless/fn-hello:${id}`,
    id: `sha256:${id}`,
    digest: `127.0.0.1:5000/initless/fn-hello@sha256:${id.repeat(2)}`,
  },
  bakedOn: {},
})

/** A version whose deploy has not recorded an image yet. */
const pendingVersion = (id: string, createdAt: number): FunctionVersion => {
  const { image: _none, ...rest } = version(id, createdAt)
  return { ...rest, state: 'pending' }
}

async function until(check: () => boolean | Promise<boolean>, what: string, ms = 3000) {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

async function setup() {
  const functions = createFakeFunctionRegistry()
  const registry = createFakeRegistry()
  const watcher = createFunctionWatcher({
    registry: functions,
    logger: createSilentLogger(),
    refreshIntervalMs: 60_000,
  })
  const live = new Map<string, StartedInstance>()
  const stopped: string[] = []
  /** Versions this host was told to prepare (build or pull, bake). */
  const prepared: string[] = []
  const active = new Map<string, FunctionDef>()
  const removedContexts: string[] = []
  const source: FunctionSource = {
    functions: () => [...active.values()],
    materialize: (fn, v) =>
      Promise.resolve({
        name: fn,
        dir: `/ctx/${fn}/${v.version}`,
        manifestFile: '',
        manifest: v.manifest,
        version: v.version,
      }),
    setActive: (fn, def) => (def ? active.set(fn, def) : active.delete(fn)),
    unpacked: () => Promise.resolve([]),
    removeContexts: (fn, keep) => {
      removedContexts.push(`${fn}:${keep.size}`)
      return Promise.resolve([])
    },
  }
  const images = new Set([
    'initless/fn-hello:aaa',
    'initless/fn-hello:bbb',
    'initless/fn-hello:old',
    '127.0.0.1:5000/initless/fn-hello@sha256:aaaaaa',
    '127.0.0.1:5000/initless/fn-hello@sha256:oldold',
  ])
  const retired: string[][] = []
  const lifecycle = createLifecycle({
    hostId: 'h1',
    functions,
    watcher,
    source,
    registry,
    instances: {
      live: () => [...live.values()],
      async stop(id) {
        live.delete(id)
        stopped.push(id)
        const rec = (await registry.listAll()).find((r) => r.id === id)
        if (rec) await registry.remove(rec.fn, id)
      },
      fillPools: () => Promise.resolve(),
      prepare: (def) => {
        prepared.push(def.version ?? '')
        return Promise.resolve({ image: FAKE_IMAGE, snapshot: undefined })
      },
    },
    store: {
      snapshotKey: (id: SnapshotIdentity) => `key-${id.imageId}`,
      retire: (_fn, keep) => (retired.push([...keep].sort()), Promise.resolve([])),
      remove: () => Promise.resolve(),
    },
    docker: {
      imageRefs: () => Promise.resolve([...images]),
      removeImage: (ref) => (images.delete(ref), Promise.resolve()),
    },
    baker: {
      identity: (def, image) =>
        Promise.resolve({
          fn: def.name,
          manifestHash: 'm',
          imageId: image.id,
          criuVersion: 'c',
          kernel: 'k',
          layout: 1,
          prefetch: 0,
          seccomp: 's',
        }),
    },
    logger: createSilentLogger(),
    drainGraceMs: 50,
    sweepIntervalMs: 20,
    pollMs: 5,
  })
  /** An instance of `v` running on this host, ready in the registry; `veth`: its sandbox's. */
  const instance = async (id: string, v: string, veth?: string) => {
    live.set(id, {
      id,
      fn: 'hello',
      runtime: 'eager',
      ip: '10.0.0.2',
      port: 8080,
      pooled: false,
      phases: PHASES,
      snapshotBytes: 1,
      ...(veth ? { sandbox: { netns: { veth } } as unknown as Sandbox } : {}),
    })
    assert.equal(await registry.reserve('hello', 10, id, 'h1'), true)
    assert.equal(
      await registry.markReady('hello', id, { host: '10.0.0.2', port: 8080 }, 'eager', PHASES, 'h1', v),
      true,
    )
  }
  return {
    functions,
    registry,
    watcher,
    lifecycle,
    live,
    stopped,
    prepared,
    active,
    images,
    retired,
    removedContexts,
    instance,
    async close() {
      await lifecycle.close()
      await watcher.close()
    },
  }
}

describe('lifecycle', () => {
  test('an activation switches the definition and drains the old version once its requests are done', async () => {
    const s = await setup()
    await s.functions.putVersion('hello', version('aaa', 1))
    await s.functions.activate('hello', 'aaa')
    await s.watcher.start()
    await s.lifecycle.start()
    assert.equal(s.active.get('hello')?.version, 'aaa')
    await s.instance('i-old', 'aaa')
    await s.registry.addInflight('hello', 'i-old', 1) // a gateway still has a request on it

    await s.functions.putVersion('hello', version('bbb', 2))
    await s.functions.activate('hello', 'bbb')
    await until(() => s.active.get('hello')?.version === 'bbb', 'new definition')
    assert.deepEqual(s.prepared, ['aaa', 'bbb'], 'each active version is baked here when it activates')
    await until(async () => (await s.registry.get('hello', 'i-old'))?.state === 'draining', 'draining')
    await new Promise((r) => setTimeout(r, 150))
    assert.deepEqual(s.stopped, [], 'not stopped while a request is in flight')
    await s.registry.addInflight('hello', 'i-old', -1)
    await until(() => s.stopped.includes('i-old'), 'stopped once done')
    assert.deepEqual(
      s.retired.at(-1),
      ['key-sha256:aaa', 'key-sha256:bbb'],
      'both kept versions keep their snapshots',
    )
    assert.ok(!s.images.has('initless/fn-hello:old'), 'an image of no kept version is removed')
    assert.ok(
      !s.images.has('127.0.0.1:5000/initless/fn-hello@sha256:oldold'),
      'with its reference by digest (pulled from the image registry)',
    )
    assert.ok(s.images.has('initless/fn-hello:aaa'))
    assert.ok(s.images.has('127.0.0.1:5000/initless/fn-hello@sha256:aaaaaa'))
    await s.close()
  })

  test('an instance that is never released is stopped after the request timeout', async () => {
    const s = await setup()
    await s.functions.putVersion('hello', version('aaa', 1))
    await s.functions.activate('hello', 'aaa')
    await s.watcher.start()
    await s.lifecycle.start()
    await s.instance('i-stuck', 'aaa')
    await s.registry.addInflight('hello', 'i-stuck', 1)
    const t0 = Date.now()
    await s.functions.putVersion('hello', version('bbb', 2))
    await s.functions.activate('hello', 'bbb')
    await until(() => s.stopped.includes('i-stuck'), 'stopped at the deadline')
    assert.ok(Date.now() - t0 >= 400, 'waited for timeouts.request')
    await s.close()
  })

  test('a live change of network.egress drains the instances made for the old policy only', async () => {
    const s = await setup()
    await s.functions.putVersion('hello', version('aaa', 1))
    await s.functions.activate('hello', 'aaa')
    await s.watcher.start()
    await s.lifecycle.start()
    await s.instance('i-allow', 'aaa', 'ilv00000001')
    await s.functions.putVersion('hello', {
      ...version('aaa', 1),
      manifest: { ...MANIFEST, description: 'x' },
    })
    await until(() => s.active.get('hello')?.manifest.description === 'x', 'live field applied')
    await new Promise((r) => setTimeout(r, 100))
    assert.equal(s.stopped.length, 0, 'another live field keeps the instances')

    const deny = { ...MANIFEST, network: { ...MANIFEST.network, egress: 'deny' as const } }
    await s.functions.putVersion('hello', { ...version('aaa', 1), manifest: deny })
    await until(() => s.active.get('hello')?.manifest.network.egress === 'deny', 'egress applied')
    assert.equal(s.active.get('hello')?.version, 'aaa', 'same version: no build, no bake')
    await until(() => s.stopped.includes('i-allow'), 'instance of the old egress drained')
    await s.instance('i-deny', 'aaa', 'ild00000002')
    await new Promise((r) => setTimeout(r, 100))
    assert.ok(!s.stopped.includes('i-deny'), 'an instance of the new egress stays')
    await s.close()
  })

  test('while a deploy is under way nothing of the function is collected; once it is done, the rest is', async () => {
    const s = await setup()
    // A registry that knows no version yet (a new one, or Redis lost): the first deploy's
    // snapshot may already be on disk, and its bake should find it there.
    assert.equal(await s.functions.lock('hello', 'deploy of aaa', 60_000), undefined)
    await s.functions.putVersion('hello', pendingVersion('aaa', 1))
    await s.watcher.start()
    await s.lifecycle.start()
    await s.lifecycle.settled()
    assert.deepEqual(s.retired, [], 'no snapshot retired while the deploy is under way')
    assert.equal(s.images.size, 5, 'no image removed while the deploy is under way')

    // The deploy records its version ready and activates it; the lock goes after.
    await s.functions.putVersion('hello', version('aaa', 1))
    await s.functions.activate('hello', 'aaa')
    await until(() => s.retired.length > 0, 'collected once the deploy is recorded')
    await s.lifecycle.settled()
    assert.deepEqual(s.retired.at(-1), ['key-sha256:aaa'], "the deployed version's snapshot is kept")
    assert.ok(!s.images.has('initless/fn-hello:old'), 'an image of no kept version is removed')
    assert.ok(s.images.has('initless/fn-hello:aaa'))
    await s.close()
  })

  test('a pending version whose deploy died (no change lock) does not hold collection back', async () => {
    const s = await setup()
    await s.functions.putVersion('hello', version('aaa', 1))
    await s.functions.activate('hello', 'aaa')
    await s.functions.putVersion('hello', pendingVersion('bbb', 2))
    await s.watcher.start()
    await s.lifecycle.start()
    await s.lifecycle.settled()
    assert.deepEqual(s.retired.at(-1), ['key-sha256:aaa'])
    assert.ok(!s.images.has('initless/fn-hello:old'))
    await s.close()
  })

  test('an old-version instance that becomes ready late is swept; delete removes everything', async () => {
    const s = await setup()
    await s.functions.putVersion('hello', version('aaa', 1))
    await s.functions.activate('hello', 'aaa')
    await s.watcher.start()
    await s.lifecycle.start()
    await s.instance('i-new', 'aaa')
    await s.instance('i-late', 'zzz')
    await until(() => s.stopped.includes('i-late'), 'late old-version instance drained')
    assert.ok(!s.stopped.includes('i-new'))
    await s.functions.remove('hello')
    await until(() => s.stopped.includes('i-new'), 'deleted function drained')
    await s.lifecycle.settled()
    assert.equal(s.active.has('hello'), false)
    assert.equal(s.images.size, 0, 'every image of the function removed')
    assert.ok(s.removedContexts.includes('hello:0'))
    assert.deepEqual(await s.registry.functions(), [], 'no instance keys left')
    await s.close()
  })
})
