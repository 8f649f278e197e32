import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createFakeFunctionRegistry } from '../shared/function-registry-fake.ts'
import { createFunctionWatcher } from '../shared/function-watcher.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { parseManifest } from '../shared/manifest.ts'
import { createWatchedCatalog } from './catalog.ts'

test('the watched catalog serves active versions only, and follows activations and deletes', async () => {
  const functions = createFakeFunctionRegistry()
  const watcher = createFunctionWatcher({
    registry: functions,
    logger: createSilentLogger(),
    refreshIntervalMs: 60_000,
  })
  await watcher.start()
  const catalog = createWatchedCatalog(watcher)
  const m = (text: string) => parseManifest(text, 'hello/function.yaml', 'hello')
  const v = (version: string, text: string, state: 'pending' | 'ready' = 'ready') => ({
    version,
    manifest: m(text),
    state,
    createdAt: 1,
    contextBytes: 1,
    bakedOn: {},
  })
  await functions.putVersion('hello', v('aaa', 'port: 80\n', 'pending'))
  await watcher.refresh()
  assert.equal(catalog.get('hello'), undefined, 'a function without an active version is not served')
  assert.deepEqual(catalog.list(), [])
  await functions.putVersion('hello', v('aaa', 'port: 80\n'))
  await functions.activate('hello', 'aaa')
  await watcher.refresh()
  assert.equal(catalog.get('hello')?.port, 80)
  assert.equal(catalog.version('hello'), 'aaa')
  await functions.putVersion('hello', v('bbb', 'port: 81\n'))
  await functions.activate('hello', 'bbb')
  await watcher.refresh()
  assert.equal(catalog.get('hello')?.port, 81)
  assert.deepEqual(
    catalog.list().map((x) => x.name),
    ['hello'],
  )
  await functions.remove('hello')
  await watcher.refresh()
  assert.equal(catalog.get('hello'), undefined)
  await watcher.close()
})
