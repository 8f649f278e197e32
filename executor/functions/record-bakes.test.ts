import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createFakeFunctionRegistry } from '../../shared/function-registry-fake.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { parseManifest } from '../../shared/manifest.ts'
import { FAKE_IMAGE } from '../adapters/docker-fake.ts'
import type { Baker } from '../snapshots/bake.ts'
import type { Snapshot } from '../snapshots/snapshot-store.ts'
import { recordBakes } from './record-bakes.ts'

const MANIFEST = parseManifest('port: 8080\n', 'hello/function.yaml', 'hello')
const def = (version?: string): FunctionDef => ({
  name: 'hello',
  dir: '/c',
  manifestFile: '/c/function.yaml',
  manifest: MANIFEST,
  ...(version ? { version } : {}),
})

test('a bake of a registry version is recorded once per snapshot, before it is handed out', async () => {
  const functions = createFakeFunctionRegistry({ now: () => 5 })
  await functions.putVersion('hello', {
    version: 'v1',
    manifest: MANIFEST,
    state: 'ready',
    createdAt: 1,
    contextBytes: 1,
    bakedOn: {},
  })
  let key = 'snap-1'
  const inner = {
    bake: async () => ({ snapshot: { meta: { key } } as Snapshot, baked: true }),
    identity: () => Promise.reject(new Error('unused')),
  } as unknown as Baker
  const baker = recordBakes(inner, { functions, hostId: 'h2', logger: createSilentLogger(), now: () => 7 })
  await baker.bake(def('v1'), FAKE_IMAGE)
  const bakedOn = () => functions.get('hello').then((r) => r?.versions[0]?.bakedOn)
  assert.deepEqual(await bakedOn(), { h2: { at: 7, snapshotKey: 'snap-1' } })
  const events = functions.events.length
  await baker.bake(def('v1'), FAKE_IMAGE)
  assert.equal(functions.events.length, events, 'the same snapshot again: no second record, no event')
  key = 'snap-2' // re-baked (a broken snapshot): recorded again
  await baker.bake(def('v1'), FAKE_IMAGE)
  assert.deepEqual(await bakedOn(), { h2: { at: 7, snapshotKey: 'snap-2' } })
  await baker.bake(def(), FAKE_IMAGE) // a folder outside the registry: nothing to record
  assert.equal(functions.events.length, events + 1)
})
