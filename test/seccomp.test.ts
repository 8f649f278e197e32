/**
 * Instances run under the default system-call filter, installed at bake and restored by CRIU on
 * both restore paths: a fixture's forbidden calls fail with EPERM after an eager and a lazy restore
 * and after a boot, and succeed once the function is `unconfined`.
 */
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { httpOnce } from '../executor/adapters/probe.ts'
import type { StartedInstance } from '../executor/runtimes/runtimes.ts'
import { readSeccompMode } from '../executor/sandbox/seccomp.ts'
import { loadFunctionDefs, type FunctionDef } from '../shared/functions.ts'
import { createTestHost, type TestHost } from './support/host.ts'
import { isCI, requireServices } from './support/integration.ts'
import { hostResources, leakedSince, NO_LEAKS, type HostResources } from './support/leaks.ts'

const EPERM = 1
const fixtures = await loadFunctionDefs(join(import.meta.dirname, 'fixtures', 'functions'))
const probe = fixtures.functions.find((f) => f.name === 'seccomp-probe')!
const variant = (name: string, seccomp: string): FunctionDef => ({
  ...probe,
  name,
  manifest: { ...probe.manifest, name, security: { seccomp } },
})
const unconfined = variant('seccomp-probe-unconfined', 'unconfined')
// A profile file in the function's folder: allows everything but the kernel keyring.
const ownProfile = variant('seccomp-probe-own', 'deny-keyring.json')

async function callsOf(inst: StartedInstance): Promise<Record<string, number>> {
  const res = await httpOnce(inst.ip, inst.port, '/calls', { timeoutMs: 10_000 })
  assert.equal(res.status, 200, res.body)
  return JSON.parse(res.body) as Record<string, number>
}

describe('seccomp: the default filter survives checkpoint and restore', () => {
  let th: TestHost | undefined
  let start: HostResources | undefined
  const resources = () =>
    hostResources({ runcRoot: th!.config.INITLESS_RUNC_ROOT, stateDir: th!.config.INITLESS_STATE_DIR })
  before(async () => {
    if (process.getuid?.() !== 0 && !isCI) return
    th = await createTestHost()
    start = resources()
  })
  after(async () => {
    if (!th) return
    const leaks = leakedSince(start!, resources())
    await th.dispose()
    assert.deepEqual(leaks, NO_LEAKS)
  })

  test('forbidden calls fail with EPERM after eager and lazy restores and a boot', async (t) => {
    if (!requireServices(t) || !th) return
    const { image } = await th.host.builder.build(probe)
    const { snapshot } = await th.host.baker.bake(probe, image, { force: true })
    for (const kind of ['eager', 'lazy', 'boot'] as const) {
      const inst = await th.start(kind, probe, image, kind === 'boot' ? undefined : snapshot)
      try {
        if (inst.pid !== undefined) assert.equal(await readSeccompMode(inst.pid), 2, `${kind}: Seccomp`)
        assert.deepEqual(await callsOf(inst), { unshare: EPERM, keyctl: EPERM, mount: EPERM }, kind)
      } finally {
        await th.stop(inst)
      }
    }
  })

  test("a function's own profile file: installed at bake, restored, given to Docker for a boot", async (t) => {
    if (!requireServices(t) || !th) return
    const { image } = await th.host.builder.build(ownProfile)
    const { snapshot } = await th.host.baker.bake(ownProfile, image, { force: true })
    for (const kind of ['eager', 'boot'] as const) {
      const inst = await th.start(kind, ownProfile, image, kind === 'boot' ? undefined : snapshot)
      try {
        if (inst.pid !== undefined) assert.equal(await readSeccompMode(inst.pid), 2, `${kind}: Seccomp`)
        assert.deepEqual(await callsOf(inst), { unshare: 0, keyctl: EPERM, mount: EPERM }, kind)
      } finally {
        await th.stop(inst)
      }
    }
  })

  test('unconfined: no filter, and the same calls get through (mount still lacks CAP_SYS_ADMIN)', async (t) => {
    if (!requireServices(t) || !th) return
    const { image } = await th.host.builder.build(unconfined)
    const { snapshot } = await th.host.baker.bake(unconfined, image, { force: true })
    const inst = await th.start('eager', unconfined, image, snapshot)
    try {
      assert.equal(await readSeccompMode(inst.pid!), 0)
      assert.deepEqual(await callsOf(inst), { unshare: 0, keyctl: 0, mount: EPERM })
    } finally {
      await th.stop(inst)
    }
  })
})
