import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import type { Baker } from '../executor/snapshots/bake.ts'
import type { ImageBuilder } from '../executor/snapshots/build.ts'
import type { ImageConfig } from '../executor/adapters/docker.ts'
import type { Snapshot } from '../executor/snapshots/snapshot-store.ts'
import { InitlessError } from '../shared/errors.ts'
import type { FunctionDef } from '../shared/functions.ts'
import { parseManifest } from '../shared/manifest.ts'
import { prepareFunction } from './functions-commands.ts'
import { createProgress, formatDuration, type CliIo, type ProgressOptions } from './progress.ts'

function lanes(opts: Partial<ProgressOptions> = {}) {
  let out = ''
  const p = createProgress({
    json: false,
    quiet: false,
    verbose: false,
    isTty: false,
    write: (t) => (out += t),
    ...opts,
  })
  return { p, out: () => out }
}

describe('createProgress', () => {
  test('a pipe gets finished steps only: no spinner, no raw output', () => {
    const { p, out } = lanes()
    p.activity('hello-node  build  Step 1/4')
    p.detail('Step 1/4 : FROM debian')
    p.progress('hello-node  build 1.0 s')
    p.activity(undefined)
    assert.equal(out(), 'hello-node  build 1.0 s\n')
  })

  test('-v adds the raw output and never draws a spinner', () => {
    const { p, out } = lanes({ verbose: true, isTty: true })
    p.activity('hello-node  build')
    p.detail('Step 1/4 : FROM debian')
    p.progress('hello-node  build 1.0 s')
    assert.equal(out(), 'Step 1/4 : FROM debian\nhello-node  build 1.0 s\n')
  })

  test('--json and --quiet print nothing on stderr', () => {
    for (const silent of [{ json: true }, { quiet: true }]) {
      const { p, out } = lanes({ ...silent, verbose: true, isTty: true })
      p.activity('x')
      p.detail('y')
      p.progress('z')
      p.close()
      assert.equal(out(), '', JSON.stringify(silent))
    }
  })

  test('a terminal gets a spinner line, erased before each finished step and at the end', () => {
    const { p, out } = lanes({ isTty: true, intervalMs: 60_000 })
    p.activity('hello-node  bake  warming up')
    p.progress('hello-node  build 1.0 s')
    p.activity(undefined)
    const text = out()
    assert.ok(text.startsWith('\r\x1b[K⠋ hello-node  bake  warming up (0 s)'), JSON.stringify(text))
    assert.ok(text.includes('\r\x1b[Khello-node  build 1.0 s\n'), JSON.stringify(text))
    assert.ok(text.endsWith('\r\x1b[K'), 'the spinner line is erased when the step ends')
  })
})

test('formatDuration', () => {
  assert.equal(formatDuration(940), '0.9 s')
  assert.equal(formatDuration(59_940), '59.9 s')
  assert.equal(formatDuration(184_000), '3 min 4 s')
})

describe('prepareFunction: one line per function', () => {
  const fn = (policy = 'auto'): FunctionDef => ({
    name: 'hello-node',
    dir: '/nowhere',
    manifestFile: '/nowhere/function.yaml',
    manifest: parseManifest(`port: 8080\nrestore:\n  policy: ${policy}\n`, 'function.yaml', 'hello-node'),
  })
  const image = { id: 'sha256:abc' } as ImageConfig
  const builder = (built: boolean): Pick<ImageBuilder, 'build'> => ({
    build: async (f, opts) => {
      opts?.onProgress?.('Step 1/2 : FROM debian')
      return { fn: f.name, tag: 'initless/fn-hello-node:1', image, built, ms: 9_400 }
    },
  })
  const snapshot = {
    meta: { key: 'k', sizeBytes: 15 * 1024 * 1024, bakeMs: 3_300, warmupRequests: 2 },
  } as Snapshot
  const baker = (fail?: Error): Pick<Baker, 'bake'> => ({
    bake: async (_f, _i, opts) => {
      opts?.onProgress?.('warming up')
      if (fail) throw fail
      return { snapshot, baked: true }
    },
  })
  const io = () => {
    const lines: string[] = []
    const details: string[] = []
    const io: CliIo = {
      print: () => {},
      progress: (l) => lines.push(l),
      detail: (l) => details.push(l),
      activity: () => {},
    }
    return { io, lines, details }
  }
  const host = (b: Pick<ImageBuilder, 'build'>, k: Pick<Baker, 'bake'>) => ({ builder: b, baker: k }) as never

  test('built and baked', async () => {
    const { io: out, lines, details } = io()
    const r = await prepareFunction({ host: host(builder(true), baker()) }, fn(), out, { bake: true })
    assert.deepEqual(lines, ['hello-node         build 9.4 s  bake 3.3 s  15 MiB'])
    assert.deepEqual(details, ['[hello-node] Step 1/2 : FROM debian', '[hello-node] warming up'])
    assert.equal(r.build.built, true)
    assert.deepEqual(r.bake && 'baked' in r.bake && r.bake.sizeBytes, 15 * 1024 * 1024)
  })

  test('nothing to do, build only, and restore policy boot', async () => {
    const cases: [boolean, string, string][] = [
      [true, 'auto', 'hello-node         image up to date  bake 3.3 s  15 MiB'],
      [false, 'auto', 'hello-node         image up to date'],
      [true, 'boot', 'hello-node         image up to date  no snapshot (restore policy boot)'],
    ]
    for (const [bake, policy, line] of cases) {
      const { io: out, lines } = io()
      await prepareFunction({ host: host(builder(false), baker()) }, fn(policy), out, { bake })
      assert.deepEqual(lines, [line], `${bake} ${policy}`)
    }
  })

  test('a failed bake still gets its line, then the error with its own last lines', async () => {
    const { io: out, lines } = io()
    const err = new InitlessError('ERR_BAKE_NOT_READY', 'never ready; last output: boom')
    await assert.rejects(
      prepareFunction({ host: host(builder(true), baker(err)) }, fn(), out, { bake: true }),
      err,
    )
    assert.deepEqual(lines, ['hello-node         build 9.4 s  FAILED'])
  })
})
