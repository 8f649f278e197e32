/**
 * The FunctionRegistry contract, run against the Redis adapter (real Redis) and the in-memory
 * fake, plus the watcher (shared/function-watcher.ts) following the real one live.
 */
import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { createFakeFunctionRegistry } from '../shared/function-registry-fake.ts'
import {
  createRedisFunctionRegistry,
  parseFunctionEvent,
  type FunctionEvent,
  type FunctionRegistry,
  type FunctionVersion,
} from '../shared/function-registry.ts'
import { createFunctionWatcher } from '../shared/function-watcher.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { parseManifest } from '../shared/manifest.ts'
import { createRedis } from '../shared/redis.ts'
import { cleanUp, isolation, REDIS_URL, redisSkipReason } from './gateway-harness.ts'

const skip = await redisSkipReason()
const MANIFEST = parseManifest('port: 8080\nscaling:\n  maxInstances: 2\n', 'hello/function.yaml', 'hello')

const version = (id: string, over: Partial<FunctionVersion> = {}): FunctionVersion => ({
  version: id,
  manifest: MANIFEST,
  state: 'ready',
  createdAt: 1000,
  contextBytes: 10,
  bakedOn: {},
  ...over,
})

interface Impl {
  readonly name: string
  readonly skip?: string | undefined
  create(): Promise<{ registry: FunctionRegistry; keys: () => Promise<string[]> }>
}

const impls: Impl[] = [
  {
    name: 'fake',
    create: () => {
      const registry = createFakeFunctionRegistry()
      return Promise.resolve({ registry, keys: () => Promise.resolve(registry.contextKeys()) })
    },
  },
  {
    name: 'redis',
    skip,
    async create() {
      const redis = createRedis(REDIS_URL, { name: 'test-function-registry' })
      const iso = isolation()
      after(async () => {
        await cleanUp(redis, iso)
        redis.disconnect()
      })
      return {
        registry: createRedisFunctionRegistry({ redis, logger: createSilentLogger(), prefix: iso.prefix }),
        keys: async () => (await redis.keys(`${iso.prefix}:*`)).sort(),
      }
    },
  },
]

async function until<T>(read: () => T, isDone: (v: T) => boolean, what: string): Promise<T> {
  const deadline = Date.now() + 3000
  for (;;) {
    const v = read()
    if (isDone(v)) return v
    if (Date.now() > deadline) throw new Error(`${what}: still ${JSON.stringify(v)}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

for (const impl of impls) {
  describe(`function registry (${impl.name})`, { skip: impl.skip }, () => {
    test('versions, activation only of a ready version, newest first', async () => {
      const { registry } = await impl.create()
      assert.equal(await registry.get('hello'), undefined)
      await registry.putVersion('hello', version('aaa', { createdAt: 1000 }))
      await registry.putVersion('hello', version('bbb', { createdAt: 2000, state: 'pending' }))
      assert.equal(await registry.activate('hello', 'bbb'), false, 'a pending version is not activated')
      assert.equal(await registry.activate('hello', 'zzz'), false, 'an unknown version is not activated')
      assert.equal(await registry.activate('hello', 'aaa'), true)
      const r = await registry.get('hello')
      assert.equal(r?.active, 'aaa')
      assert.deepEqual(
        r?.versions.map((v) => v.version),
        ['bbb', 'aaa'],
      )
      assert.deepEqual(r?.versions[1]?.manifest, MANIFEST)
      assert.deepEqual(
        (await registry.list()).map((x) => x.name),
        ['hello'],
      )
    })

    test('removeVersions never drops the active version; remove leaves no key', async () => {
      const { registry, keys } = await impl.create()
      await registry.putVersion('hello', version('aaa'))
      await registry.putVersion('hello', version('bbb', { createdAt: 2000 }))
      await registry.saveContext('hello', 'aaa', Buffer.from('tar-a'))
      await registry.saveContext('hello', 'bbb', Buffer.from('tar-b'))
      assert.equal(await registry.activate('hello', 'aaa'), true)
      await registry.removeVersions('hello', ['aaa', 'bbb'])
      const r = await registry.get('hello')
      assert.deepEqual(
        r?.versions.map((v) => v.version),
        ['aaa'],
      )
      assert.deepEqual(await registry.context('hello', 'aaa'), Buffer.from('tar-a'))
      assert.equal(await registry.context('hello', 'bbb'), undefined)
      assert.equal(await registry.remove('hello'), true)
      assert.equal(await registry.remove('hello'), false)
      assert.equal(await registry.get('hello'), undefined)
      assert.deepEqual(await registry.list(), [])
      assert.deepEqual(await keys(), [], 'nothing left')
    })

    test('each host records its bake of a version beside the version; dropping the version drops them', async () => {
      const { registry } = await impl.create()
      assert.equal(
        await registry.markBaked('hello', 'aaa', 'host-a', { at: 1, snapshotKey: 'k' }),
        false,
        'no such version',
      )
      await registry.putVersion(
        'hello',
        version('aaa', { bakedOn: { 'host-a': { at: 1, snapshotKey: 'ka' } } }),
      )
      await registry.putVersion('hello', version('bbb', { createdAt: 2000 }))
      assert.equal(await registry.activate('hello', 'bbb'), true)
      await Promise.all([
        registry.markBaked('hello', 'aaa', 'host-b', { at: 2, snapshotKey: 'kb' }),
        registry.markBaked('hello', 'aaa', 'host:c', { at: 3, snapshotKey: '' }),
      ])
      const baked = (await registry.get('hello'))?.versions.find((v) => v.version === 'aaa')?.bakedOn
      assert.deepEqual(baked, {
        'host-a': { at: 1, snapshotKey: 'ka' },
        'host-b': { at: 2, snapshotKey: 'kb' },
        'host:c': { at: 3, snapshotKey: '' },
      })
      // Rewriting the version (a live-field update) keeps the hosts' records.
      await registry.putVersion('hello', version('aaa', { contextBytes: 11 }))
      const again = (await registry.get('hello'))?.versions.find((v) => v.version === 'aaa')?.bakedOn
      assert.deepEqual(Object.keys(again ?? {}).sort(), ['host-b', 'host:c'])
      await registry.removeVersions('hello', ['aaa'])
      await registry.putVersion('hello', version('aaa'))
      assert.deepEqual(
        (await registry.get('hello'))?.versions.find((v) => v.version === 'aaa')?.bakedOn,
        {},
        'the bakes of a dropped version went with it',
      )
    })

    test('the change lock: one holder at a time per function, released by its holder or its TTL', async () => {
      const { registry, keys } = await impl.create()
      assert.equal(await registry.changeHolder('hello'), undefined)
      assert.equal(await registry.lock('hello', 'deploy A', 60_000), undefined)
      assert.equal(await registry.changeHolder('hello'), 'deploy A')
      assert.equal(await registry.lock('hello', 'deploy B', 60_000), 'deploy A')
      assert.equal(await registry.lock('other', 'deploy C', 60_000), undefined, 'per function')
      await registry.unlock('hello', 'deploy B')
      assert.equal(await registry.lock('hello', 'deploy B', 60_000), 'deploy A', 'only its holder frees it')
      await registry.unlock('hello', 'deploy A')
      assert.equal(await registry.changeHolder('hello'), undefined, 'released')
      assert.equal(await registry.lock('hello', 'rollback', 50), undefined)
      await new Promise((r) => setTimeout(r, 120))
      assert.equal(await registry.changeHolder('hello'), undefined, 'expired')
      assert.equal(await registry.lock('hello', 'deploy D', 60_000), undefined, 'a dead holder times out')
      await registry.unlock('hello', 'deploy D')
      await registry.unlock('other', 'deploy C')
      assert.deepEqual(await keys(), [], 'nothing left')
    })

    test('every change is published; the watcher follows it live', async () => {
      const { registry } = await impl.create()
      const events: FunctionEvent[] = []
      const sub = await registry.subscribe({ onEvent: (e) => events.push(e) })
      const watcher = createFunctionWatcher({
        registry,
        logger: createSilentLogger(),
        refreshIntervalMs: 60_000,
      })
      await watcher.start()
      const changes: string[] = []
      watcher.onChange((c) => changes.push(`${c.fn}:${c.before?.active ?? '-'}>${c.after?.active ?? 'gone'}`))
      await registry.putVersion('hello', version('aaa'))
      await registry.activate('hello', 'aaa')
      await until(
        () => watcher.active('hello')?.version,
        (v) => v === 'aaa',
        'watcher active',
      )
      await registry.remove('hello')
      await until(
        () => watcher.get('hello'),
        (v) => v === undefined,
        'watcher after delete',
      )
      await until(
        () => events.length,
        (n) => n >= 3,
        'events',
      )
      assert.deepEqual(
        events.map((e) => `${e.action}:${e.version ?? ''}`),
        ['version:aaa', 'activated:aaa', 'deleted:'],
      )
      assert.equal(changes.at(-1), 'hello:aaa>gone')
      assert.ok(
        changes.some((c) => c.endsWith('>aaa')),
        changes.join(' '),
      )
      await watcher.close()
      await sub.close()
    })

    test('a watcher reads what exists at start, and a re-read catches what no event told', async () => {
      const { registry } = await impl.create()
      await registry.putVersion('hello', version('aaa'))
      await registry.activate('hello', 'aaa')
      // Events go nowhere: the subscription is a dud, as after a lost pub/sub message.
      const deaf = { ...registry, subscribe: () => Promise.resolve({ close: () => Promise.resolve() }) }
      const watcher = createFunctionWatcher({
        registry: deaf,
        logger: createSilentLogger(),
        refreshIntervalMs: 60_000,
      })
      await watcher.start()
      assert.equal(watcher.active('hello')?.version, 'aaa', 'read at start')
      await registry.putVersion('hello', version('bbb', { createdAt: 2000 }))
      await registry.activate('hello', 'bbb')
      assert.equal(watcher.active('hello')?.version, 'aaa', 'no event reached it')
      await watcher.refresh()
      assert.equal(watcher.active('hello')?.version, 'bbb', 'the re-read repaired it')
      await registry.remove('hello')
      await watcher.refresh()
      assert.equal(watcher.get('hello'), undefined)
      await watcher.close()
    })
  })
}

test('parseFunctionEvent accepts only function-registry events', () => {
  assert.deepEqual(
    parseFunctionEvent('{"type":"function-registry","fn":"a","action":"activated","version":"v"}'),
    {
      type: 'function-registry',
      fn: 'a',
      action: 'activated',
      version: 'v',
    },
  )
  for (const bad of [
    'nope',
    '{}',
    '{"type":"function-registry","fn":"a","action":"boom"}',
    '{"type":"instance","fn":"a"}',
  ])
    assert.equal(parseFunctionEvent(bad), undefined, bad)
})
