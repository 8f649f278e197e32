import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { startDevLoop } from './dev-loop.ts'

function setup(only: string[] = []) {
  let emit: (path: string) => void = () => undefined
  const deploys: string[] = []
  const printed: string[] = []
  let release: (() => void) | undefined
  let isBlocking = false
  const loop = startDevLoop({
    dir: '/fns',
    only,
    debounceMs: 20,
    watch: (_dir, onChange) => ((emit = onChange), { close: () => (emit = () => undefined) }),
    async deploy(fn, folder) {
      deploys.push(`${fn}@${folder}`)
      if (isBlocking) await new Promise<void>((r) => (release = r))
      return `${fn} deployed`
    },
    print: (line) => printed.push(line),
  })
  return {
    loop,
    deploys,
    printed,
    emit: (p: string) => emit(p),
    block: () => (isBlocking = true),
    unblock: () => {
      isBlocking = false
      release?.()
    },
  }
}

test('a burst of changes in one folder is one redeploy; other folders and names are their own', async () => {
  const s = setup()
  for (const p of ['hello/server.js', 'hello/function.yaml', 'hello/lib/x.js']) s.emit(p)
  s.emit('other/app.py')
  s.emit('Not_A_Name/x')
  s.emit('.git/index')
  await new Promise((r) => setTimeout(r, 60))
  await s.loop.settled()
  assert.deepEqual(s.deploys.sort(), ['hello@/fns/hello', 'other@/fns/other'])
  assert.deepEqual(s.printed.sort(), ['hello deployed', 'other deployed'])
  s.loop.close()
})

test('a change during a deploy queues exactly one more; only the named functions are watched', async () => {
  const s = setup(['hello'])
  s.block()
  s.emit('hello/a')
  await new Promise((r) => setTimeout(r, 40))
  s.emit('hello/b')
  await new Promise((r) => setTimeout(r, 40))
  s.emit('hello/c')
  await new Promise((r) => setTimeout(r, 40))
  s.emit('other/x')
  s.unblock()
  await s.loop.settled()
  assert.deepEqual(s.deploys, ['hello@/fns/hello', 'hello@/fns/hello'])
  s.loop.close()
})

test('the default watcher sees a file written in a function folder (node:fs, recursive)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-dev-'))
  await mkdir(join(dir, 'hello', 'src'), { recursive: true })
  const deploys: string[] = []
  const loop = startDevLoop({
    dir,
    only: [],
    debounceMs: 20,
    deploy: (fn) => (deploys.push(fn), Promise.resolve(`${fn} deployed`)),
    print: () => undefined,
  })
  try {
    await new Promise((r) => setTimeout(r, 50))
    await writeFile(join(dir, 'hello', 'src', 'app.js'), 'x')
    const deadline = Date.now() + 3000
    while (!deploys.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    await loop.settled()
    assert.deepEqual(deploys, ['hello'])
  } finally {
    loop.close()
    await rm(dir, { recursive: true, force: true })
  }
})
