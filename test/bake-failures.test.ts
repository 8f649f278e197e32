import assert from 'node:assert/strict'
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { snapshotIdentity } from '../executor/snapshots/bake.ts'
import { httpOnce } from '../executor/adapters/probe.ts'
import { loadFunctionDefs, type FunctionDef } from '../shared/functions.ts'
import { createTestHost, type TestHost } from './support/host.ts'
import { isCI, requireServices } from './support/integration.ts'
import { hostResources, leakedSince, NO_LEAKS, type HostResources } from './support/leaks.ts'

const FIXTURES = join(import.meta.dirname, 'fixtures', 'functions')

describe('baking: failures a user sees, re-bakes, the checkpoint signal', () => {
  let th: TestHost | undefined
  let start: HostResources | undefined
  const resources = () =>
    hostResources({ runcRoot: th!.config.INITLESS_RUNC_ROOT, stateDir: th!.config.INITLESS_STATE_DIR })
  /** No container, mount, namespace or half-written snapshot may be left by a failed bake. */
  async function assertClean(fn: string) {
    assert.deepEqual(leakedSince(start!, resources()), NO_LEAKS)
    const dir = join(th!.config.INITLESS_STATE_DIR, 'snapshots', fn)
    const left = await readdir(dir).catch(() => [])
    assert.deepEqual(
      left.filter((n) => n.startsWith('.tmp-')),
      [],
      `half-written snapshots of ${fn}`,
    )
  }
  async function fixture(name: string): Promise<FunctionDef> {
    const set = await loadFunctionDefs(FIXTURES)
    const fn = set.functions.find((f) => f.name === name)
    assert.ok(fn, `fixture ${name}: ${set.problems.map((p) => p.error.message).join('; ')}`)
    return fn
  }

  before(async () => {
    if (process.getuid?.() !== 0 && !isCI) return
    th = await createTestHost()
    start = resources()
  })
  after(async () => {
    await th?.dispose()
  })

  test('a function that never becomes ready: ERR_BAKE_NOT_READY with its last output', async (t) => {
    if (!requireServices(t) || !th) return
    const fn = await fixture('never-ready')
    const { image } = await th.host.builder.build(fn)
    await assert.rejects(th.host.baker.bake(fn, image), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_BAKE_NOT_READY')
      assert.match(
        err.message,
        /never-ready: GET \/healthz .* did not answer 2xx containing "ok" within 2000 ms/,
      )
      assert.match(err.message, /last output of never-ready:\nstarting but never listening/)
      return true
    })
    await assertClean('never-ready')
  })

  test('a function that crashes during warm-up: ERR_BAKE_WARMUP_FAILED with its last output', async (t) => {
    if (!requireServices(t) || !th) return
    const fn = await fixture('crash-warmup')
    const { image } = await th.host.builder.build(fn)
    await assert.rejects(th.host.baker.bake(fn, image), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_BAKE_WARMUP_FAILED')
      assert.match(err.message, /crash-warmup: (warm-up GET \/work failed|the process exited during warm-up)/)
      assert.match(err.message, /crashing on request 5/)
      return true
    })
    await assertClean('crash-warmup')
  })

  test('a changed manifest forces a re-bake; the old snapshot is never restored', async (t) => {
    if (!requireServices(t) || !th) return
    const dir = await mkdtemp(join(tmpdir(), 'initless-fns-'))
    after(() => rm(dir, { recursive: true, force: true }))
    await cp(join(FIXTURES, 'py-ok'), join(dir, 'py-ok'), { recursive: true })
    const load = async () => (await loadFunctionDefs(dir)).functions[0]!

    const v1 = await load()
    const { image } = await th.host.builder.build(v1)
    const first = await th.host.baker.bake(v1, image)
    assert.equal(first.baked, true)
    assert.equal((await th.host.baker.bake(v1, image)).baked, false, 'an unchanged function is not re-baked')

    const manifest = join(dir, 'py-ok', 'function.yaml')
    await writeFile(
      manifest,
      (await readFile(manifest, 'utf8')).replace('GREETING: hello', 'GREETING: changed'),
    )
    const v2 = await load()
    const versions = await th.host.versions()
    assert.equal(
      await th.host.store.find(snapshotIdentity(v2, image, versions)),
      undefined,
      'no snapshot matches the new manifest',
    )
    const second = await th.host.baker.bake(v2, image)
    assert.equal(second.baked, true)
    assert.notEqual(second.snapshot.meta.key, first.snapshot.meta.key)
    assert.equal(
      await th.host.store.find(snapshotIdentity(v1, image, versions)),
      undefined,
      'the old snapshot is retired',
    )

    const inst = await th.start('eager', v2, image, second.snapshot)
    try {
      const res = await httpOnce(inst.ip, inst.port, '/')
      // State from before the checkpoint: three warm-up requests to /work.
      assert.equal(res.body, 'changed 3\n')
    } finally {
      await th.stop(inst)
    }
    await assertClean('py-ok')
  })

  test('restore.checkpointSignal reaches the process after warm-up, before the checkpoint', async (t) => {
    if (!requireServices(t) || !th) return
    const dir = await mkdtemp(join(tmpdir(), 'initless-fns-'))
    after(() => rm(dir, { recursive: true, force: true }))
    await cp(join(FIXTURES, 'py-ok'), join(dir, 'py-ok'), { recursive: true })
    const manifest = join(dir, 'py-ok', 'function.yaml')
    const original = await readFile(manifest, 'utf8')
    const withSignal = async (signal: string) => {
      await writeFile(
        manifest,
        original.replace('  policy: eager', `  policy: eager\n  checkpointSignal: ${signal}`),
      )
      const fn = (await loadFunctionDefs(dir)).functions[0]!
      assert.equal(fn.manifest.restore.checkpointSignal, signal)
      const { image } = await th!.host.builder.build(fn)
      const { snapshot } = await th!.host.baker.bake(fn, image)
      const inst = await th!.start('eager', fn, image, snapshot)
      try {
        return (await httpOnce(inst.ip, inst.port, '/')).body
      } finally {
        await th!.stop(inst)
      }
    }
    // The fixture handles SIGUSR1: the restored process is the one that received it.
    assert.equal(await withSignal('SIGUSR1'), 'hello 3 prepared\n')
    // SIGUSR2 it does not handle: as its sandbox's PID 1 it is not killed, and the bake succeeds.
    assert.equal(await withSignal('SIGUSR2'), 'hello 3\n')
    await assertClean('py-ok')
  })
})
