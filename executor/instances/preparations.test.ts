import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { FunctionDef } from '../../shared/functions.ts'
import { FAKE_IMAGE, fakeSnapshot } from '../runtimes/function-fake.ts'
import { createPreparations } from './preparations.ts'

/** Two functions built from one folder, as a variant with another manifest is. */
function twoFromOneFolder(): [FunctionDef, FunctionDef] {
  const base = { dir: '/functions/shared', version: undefined } as unknown as FunctionDef
  return [
    { ...base, name: 'a', manifest: { name: 'a', restore: { policy: 'lazy' } } } as unknown as FunctionDef,
    { ...base, name: 'b', manifest: { name: 'b', restore: { policy: 'lazy' } } } as unknown as FunctionDef,
  ]
}

test('concurrent preparations share one build and bake per function, never across functions', async () => {
  const [a, b] = twoFromOneFolder()
  const bakes: string[] = []
  let release = () => {}
  const gate = new Promise<void>((r) => (release = r))
  const preparations = createPreparations({
    builder: { build: async (f) => ({ fn: f.name, tag: 't', image: FAKE_IMAGE, built: false, ms: 1 }) },
    baker: {
      async bake(f) {
        bakes.push(f.name)
        await gate
        return { snapshot: fakeSnapshot(f.name, 1024, `key-${f.name}`), baked: true }
      },
    },
    store: { usable: async () => true },
  })
  const running = [preparations.prepare(a), preparations.prepare(a), preparations.prepare(b)]
  await new Promise((r) => setTimeout(r, 10))
  release()
  const [a1, a2, b1] = await Promise.all(running)
  assert.deepEqual(bakes.sort(), ['a', 'b'], 'one bake each')
  assert.equal(a1, a2, 'the two demands for a share one preparation')
  assert.equal(a1?.snapshot?.meta.key, 'key-a')
  assert.equal(b1?.snapshot?.meta.key, 'key-b', "b does not get a's snapshot")
  assert.equal(preparations.snapshot('b')?.meta.key, 'key-b')
})
