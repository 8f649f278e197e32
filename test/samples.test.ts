import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { httpOnce } from '../executor/adapters/probe.ts'
import { readSeccompMode } from '../executor/sandbox/seccomp.ts'
import { loadFunctionDefs, type FunctionDef } from '../shared/functions.ts'
import { requireServices, isCI } from './support/integration.ts'
import { hostResources, leakedSince, NO_LEAKS, type HostResources } from './support/leaks.ts'
import { createTestHost, type TestHost } from './support/host.ts'

/** What each sample must answer, after a restore exactly as after a boot. */
const EXPECTED: Record<string, { method: string; path: string; body?: string; contains: string }> = {
  'flask-table': { method: 'GET', path: '/?key=888888', contains: '{"value": 888888}' },
  'spring-greeting': { method: 'GET', path: '/', contains: 'Greetings from Spring Boot!' },
  'hello-node': { method: 'GET', path: '/', contains: '"message":"hello from node"' },
  'ts-compile': { method: 'POST', path: '/', body: 'let n: number = 1', contains: 'let n = 1;' },
}

const samples = await loadFunctionDefs('functions')

describe('sample functions: build, bake from scratch, restore eagerly and lazily, boot', () => {
  let th: TestHost | undefined
  let before_: HostResources | undefined
  before(async () => {
    if (process.getuid?.() !== 0 && !isCI) return
    th = await createTestHost()
    before_ = hostResources({
      runcRoot: th.config.INITLESS_RUNC_ROOT,
      stateDir: th.config.INITLESS_STATE_DIR,
    })
  })
  after(async () => {
    if (!th || !before_) return
    const leaks = leakedSince(
      before_,
      hostResources({ runcRoot: th.config.INITLESS_RUNC_ROOT, stateDir: th.config.INITLESS_STATE_DIR }),
    )
    await th.dispose()
    assert.deepEqual(leaks, NO_LEAKS)
  })

  test('every sample folder has a valid manifest and an expected answer', () => {
    assert.deepEqual(samples.problems, [])
    assert.deepEqual(samples.functions.map((f) => f.name).sort(), Object.keys(EXPECTED).sort())
  })

  for (const name of Object.keys(EXPECTED)) {
    test(name, async (t) => {
      if (!requireServices(t) || !th) return
      const fn = samples.functions.find((f) => f.name === name) as FunctionDef
      const expected = EXPECTED[name]!
      const built = await th.host.builder.build(fn)
      const baked = await th.host.baker.bake(fn, built.image, { force: true })
      assert.equal(baked.baked, true)
      const meta = baked.snapshot.meta
      assert.equal(meta.fn, name)
      assert.equal(meta.imageId, built.image.id)
      assert.ok(meta.warmupRequests >= 1, 'warm-up ran before the checkpoint')
      assert.ok(meta.sizeBytes > 1_000_000)
      // Every sample may restore lazily (policy auto or lazy): its working set was profiled.
      assert.ok((meta.workingSetPages ?? 0) > 0, `working-set pages: ${meta.workingSetPages}`)
      for (const kind of ['eager', 'lazy', 'boot'] as const) {
        const inst = await th.start(kind, fn, built.image, kind === 'boot' ? undefined : baked.snapshot)
        try {
          const res = await httpOnce(inst.ip, inst.port, expected.path, {
            method: expected.method,
            ...(expected.body ? { body: expected.body, headers: { 'content-type': 'text/plain' } } : {}),
            timeoutMs: 30_000,
          })
          assert.equal(res.status, 200, `${name} ${kind}: ${res.body.slice(0, 200)}`)
          assert.ok(
            res.body.includes(expected.contains),
            `${name} ${kind} answered ${res.body.slice(0, 200)}`,
          )
          assert.equal(inst.runtime, kind)
          // The filter installed at bake came back with the process on both restore paths.
          if (kind !== 'boot') assert.equal(await readSeccompMode(inst.pid!), 2, `${name} ${kind}: Seccomp`)
        } finally {
          await th.stop(inst)
        }
      }
      if (name !== 'hello-node') return
      // Sandboxes prepared without the sandbox helper (ip, mount(8), node's fs and spawn): the
      // fallback of a host not provisioned by this version.
      assert.ok(th.host.sandboxHelper, 'this host prepares sandboxes with the helper')
      const plain = await createTestHost({
        INITLESS_STATE_DIR: th.config.INITLESS_STATE_DIR,
        INITLESS_SANDBOX_HELPER: 'off',
      })
      assert.equal(plain.host.sandboxHelper, undefined)
      const inst = await plain.start('lazy', fn, built.image, baked.snapshot)
      try {
        const res = await httpOnce(inst.ip, inst.port, expected.path, { timeoutMs: 30_000 })
        assert.equal(res.status, 200)
        assert.ok(res.body.includes(expected.contains))
      } finally {
        await plain.stop(inst)
      }
    })
  }
})
