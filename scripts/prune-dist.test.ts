import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { pruneStaleOutputs, staleOutputs } from './prune-dist.mjs'

test('dist outputs of deleted sources are found and removed; the others and non-JS files stay', async () => {
  const root = await mkdtemp(join(tmpdir(), 'initless-prune-'))
  try {
    const dist = join(root, 'dist')
    await mkdir(join(root, 'gateway'), { recursive: true })
    await mkdir(join(dist, 'gateway'), { recursive: true })
    await writeFile(join(root, 'gateway', 'kept.ts'), '')
    for (const f of ['kept.js', 'kept.js.map', 'gone.js', 'gone.js.map', 'notes.c'])
      await writeFile(join(dist, 'gateway', f), '')
    await writeFile(join(dist, '.tsbuildinfo'), '')
    const stale = [join(dist, 'gateway', 'gone.js'), join(dist, 'gateway', 'gone.js.map')]
    assert.deepEqual(staleOutputs(dist, root).sort(), stale)
    assert.deepEqual(pruneStaleOutputs(dist, root).sort(), stale)
    assert.deepEqual(staleOutputs(dist, root), [])
    assert.deepEqual(staleOutputs(join(root, 'no-dist'), root), [])
  } finally {
    await rm(root, { recursive: true, force: true })
  }
})
