import assert from 'node:assert/strict'
import { chmod, mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { hashContext } from './build.ts'

let tmp: string
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'initless-build-'))
})
after(async () => {
  await rm(tmp, { recursive: true, force: true })
})

let counter = 0
/** A small build context: a Dockerfile, a script and a nested source file. */
async function context(): Promise<string> {
  const dir = join(tmp, `ctx-${++counter}`)
  await mkdir(join(dir, 'src'), { recursive: true })
  await writeFile(join(dir, 'Dockerfile'), 'FROM debian:bookworm-slim\nCOPY . /app\n')
  await writeFile(join(dir, 'run.sh'), '#!/bin/sh\nexec node /app/src/server.js\n')
  await chmod(join(dir, 'run.sh'), 0o755)
  await writeFile(join(dir, 'src', 'server.js'), 'console.log("hello")\n')
  await chmod(join(dir, 'src', 'server.js'), 0o644)
  return dir
}

describe('hashContext', () => {
  test('the same content in two folders hashes the same', async () => {
    const a = await hashContext(await context())
    assert.match(a, /^[0-9a-f]{64}$/)
    assert.equal(await hashContext(await context()), a)
  })

  test('hashing twice gives the same result', async () => {
    const dir = await context()
    assert.equal(await hashContext(dir), await hashContext(dir))
  })

  const changes: Array<[string, (dir: string) => Promise<unknown>]> = [
    ['one byte of a file', (d) => writeFile(join(d, 'src', 'server.js'), 'console.log("hellO")\n')],
    ['a file name', (d) => rename(join(d, 'src', 'server.js'), join(d, 'src', 'server.mjs'))],
    ['a folder name', (d) => rename(join(d, 'src'), join(d, 'lib'))],
    ['a file mode', (d) => chmod(join(d, 'src', 'server.js'), 0o755)],
    ['an added empty directory', (d) => mkdir(join(d, 'empty'))],
    ['an added empty file', (d) => writeFile(join(d, 'empty.txt'), '')],
    ['an added symlink', (d) => symlink('src/server.js', join(d, 'link'))],
    ['a moved file (same name, other folder)', (d) => rename(join(d, 'run.sh'), join(d, 'src', 'run.sh'))],
  ]
  for (const [what, change] of changes) {
    test(`changing ${what} changes the hash`, async () => {
      const dir = await context()
      const before = await hashContext(dir)
      await change(dir)
      assert.notEqual(await hashContext(dir), before)
    })
  }

  test('a symlink is hashed by its target', async () => {
    const dir = await context()
    await symlink('src/server.js', join(dir, 'link'))
    const before = await hashContext(dir)
    await rm(join(dir, 'link'))
    await symlink('run.sh', join(dir, 'link'))
    assert.notEqual(await hashContext(dir), before)
  })

  test('file boundaries count: content cannot impersonate the next file', async () => {
    // Two files, `a` empty and `b` = "y", against one file `a` whose bytes spell b's entry.
    const two = join(tmp, 'boundary-two')
    const one = join(tmp, 'boundary-one')
    await mkdir(two)
    await mkdir(one)
    await writeFile(join(two, 'a'), '')
    await writeFile(join(two, 'b'), 'y')
    await chmod(join(two, 'a'), 0o644)
    await chmod(join(two, 'b'), 0o644)
    await writeFile(join(one, 'a'), `f b ${0o644} 1\ny`)
    await chmod(join(one, 'a'), 0o644)
    assert.notEqual(await hashContext(one), await hashContext(two))
    await writeFile(join(one, 'a'), `f b ${0o644}\ny`)
    assert.notEqual(await hashContext(one), await hashContext(two))
  })
})
