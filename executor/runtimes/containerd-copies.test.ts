import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { removeContainerdCopies } from './containerd-copies.ts'

test("removeContainerdCopies: containerd's copies written since the given time or stale, nothing else", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-ctrd-'))
  try {
    const now = Date.now()
    const make = async (name: string, agoMs: number) => {
      await mkdir(join(dir, name))
      await writeFile(join(dir, name, 'pages-1.img'), 'x')
      const t = (now - agoMs) / 1000
      await utimes(join(dir, name), t, t)
    }
    await make('ctrd-checkpoint111', 1_000) // left by a call made since `since`
    await make('ctrd-checkpoint222', 60_000) // older than `since`: maybe another restore's, running
    await make('ctrd-checkpoint333', 20 * 60_000) // stale: no restore takes that long
    await make('other-dir', 1_000)
    await writeFile(join(dir, 'ctrd-checkpoint-file'), 'not a dir')
    assert.equal(await removeContainerdCopies(now - 10_000, dir), 2)
    assert.deepEqual((await readdir(dir)).sort(), ['ctrd-checkpoint-file', 'ctrd-checkpoint222', 'other-dir'])
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})
