/**
 * Resource abuse inside an instance, on the real stack (executor + gateway, CRIU restores): a fork
 * bomb, a memory hog, a CPU spin and a disk fill each end with that instance dead (or recycled)
 * and reported with its reason (the client's ERR_INSTANCE_DIED, the executor's log, /metrics),
 * while an instance of another function keeps answering (its latency is logged, not asserted), and
 * the next request is served by a freshly restored instance. The limits are checked in the
 * restored instances' cgroups and writable layers first (a lazy and an eager restore).
 * The fixture's limits are tight (pids 64, memory 64Mi, disk 16Mi, half a CPU).
 */
import assert from 'node:assert/strict'
import { statfs, readFile, cp, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test, type TestContext } from 'node:test'
import { readCgroupLayout, hierarchyWith } from '../executor/adapters/cgroups.ts'
import type { InstanceRecord } from '../shared/contracts.ts'
import { requireServices } from './support/integration.ts'
import { startE2eStack, type E2eStack, type HttpResponse } from './support/e2e.ts'

const FIXTURES = join(import.meta.dirname, 'fixtures', 'functions')
const MiB = 1024 * 1024
const stateDir = `/var/lib/initless-test/abuse-${process.pid}`

/** The cgroup v1 (or v2) file of an instance's cgroup for `controller`. */
async function cgroupFile(id: string, controller: string, file: string): Promise<string> {
  const layout = await readCgroupLayout()
  const h = layout.v2 ? '' : (hierarchyWith(layout, controller) ?? controller)
  return (await readFile(join(layout.root, h, 'initless', id, file), 'utf8')).trim()
}

describe('resource abuse inside an instance', () => {
  let stack: E2eStack | undefined
  let functionsDir: string | undefined
  after(async () => {
    await stack?.stop()
    if (functionsDir) await rm(functionsDir, { recursive: true, force: true })
    await rm(stateDir, { recursive: true, force: true })
  })

  /** GET the neighbour every 100 ms while `during` runs; its latencies (ms), all answered 200. */
  async function neighbourDuring<T>(during: Promise<T>): Promise<{ result: T; latencies: number[] }> {
    const latencies: number[] = []
    let done = false
    const result = during.finally(() => (done = true))
    const probing = (async () => {
      while (!done) {
        const t0 = performance.now()
        const res = await stack!.request('GET', '/fn/neighbour/work', { timeoutMs: 15_000 })
        assert.equal(res.status, 200, `the neighbour answers during the abuse: ${res.text}`)
        latencies.push(Math.round(performance.now() - t0))
        await new Promise((r) => setTimeout(r, 100))
      }
    })()
    const [r] = await Promise.all([result, probing])
    return { result: r, latencies }
  }

  async function onlyInstance(): Promise<InstanceRecord> {
    const [inst, ...rest] = await stack!.waitForInstances(
      'abuse',
      (l) => l.some((i) => i.state === 'ready'),
      30_000,
    )
    assert.equal(rest.length, 0, 'one instance of the abuse function')
    return inst!
  }

  /** The abuse, then: reported with `reason`, gone from the registry, a fresh restore serves next. */
  async function abuse(
    t: TestContext,
    path: string,
    reason: string,
    expect: (res: HttpResponse) => void,
  ): Promise<void> {
    const warm = await stack!.request('GET', '/fn/abuse/healthz')
    assert.equal(warm.status, 200, warm.text)
    const before = await onlyInstance()
    const { result: res, latencies } = await neighbourDuring(
      stack!.request('POST', `/fn/abuse${path}`, { body: 'x', timeoutMs: 30_000 }),
    )
    expect(res)
    // Recycled (or already gone) within a few reap intervals, its reason in the executor's log.
    await stack!.waitForInstances('abuse', (l) => !l.some((i) => i.id === before.id), 15_000)
    const died = stack!.executor.records().find((r) => r.msg === 'instance died' && r['id'] === before.id)
    if (reason !== 'request-timeout') assert.equal(died?.['reason'], reason, `executor log for ${path}`)
    const metrics = await stack!.request('GET', '/metrics')
    assert.match(
      metrics.text,
      new RegExp(`initless_instance_deaths_total\\{function="abuse",reason="${reason}"\\} 1`),
    )
    t.diagnostic(
      `${path}: ${res.status} ${res.text.slice(0, 160)}; neighbour latency during it (ms): ${latencies.join(' ')}`,
    )
    const next = await stack!.request('GET', '/fn/abuse/healthz')
    assert.equal(next.status, 200, next.text)
    assert.match(String(next.headers['server-timing']), /cold/, 'served by a restore')
    const after = await onlyInstance()
    assert.notEqual(after.id, before.id, 'a fresh instance')
  }

  test('limits hold on restore, each abuse ends its instance with its reason', async (t) => {
    if (!requireServices(t)) return
    functionsDir = await mkdtemp(join(tmpdir(), 'initless-abuse-'))
    await cp(join(FIXTURES, 'abuse'), join(functionsDir, 'abuse'), { recursive: true })
    await cp(join(FIXTURES, 'py-ok'), join(functionsDir, 'neighbour'), { recursive: true })
    stack = await startE2eStack({
      env: {
        INITLESS_FUNCTIONS_DIR: functionsDir,
        INITLESS_STATE_DIR: stateDir,
        ...(process.env.INITLESS_SANDBOX_HELPER
          ? { INITLESS_SANDBOX_HELPER: process.env.INITLESS_SANDBOX_HELPER }
          : {}),
      },
      prepareTimeoutMs: 300_000,
    })

    // The limits, in a lazily restored instance (abuse) and an eagerly restored one (neighbour).
    assert.equal((await stack.request('GET', '/fn/neighbour/work')).status, 200)
    assert.equal((await stack.request('GET', '/fn/abuse/healthz')).status, 200)
    const abuseInst = await onlyInstance()
    const [neighbour] = await stack.instances('neighbour')
    assert.equal(abuseInst.runtime, 'lazy')
    assert.equal(neighbour?.runtime, 'eager')
    const limits = async (id: string) => ({
      memory: Number(
        await cgroupFile(id, 'memory', 'memory.limit_in_bytes').catch(() =>
          cgroupFile(id, 'memory', 'memory.max'),
        ),
      ),
      pids: await cgroupFile(id, 'pids', 'pids.max'),
      cpuQuota: await cgroupFile(id, 'cpu', 'cpu.cfs_quota_us').catch(() => cgroupFile(id, 'cpu', 'cpu.max')),
      diskBytes: await statfs(join(stateDir, 'instances', id, 'layer')).then((s) => s.blocks * s.bsize),
    })
    assert.deepEqual(await limits(abuseInst.id), {
      memory: 64 * MiB,
      pids: '64',
      cpuQuota: '50000',
      diskBytes: 16 * MiB,
    })
    assert.deepEqual(await limits(neighbour.id), {
      memory: 512 * MiB,
      pids: '4096',
      cpuQuota: '100000',
      diskBytes: 256 * MiB,
    })

    const died = (reason: string) => (res: HttpResponse) => {
      assert.equal(res.status, 502, res.text)
      const body = JSON.parse(res.text) as { code: string; reason: string }
      assert.equal(body.code, 'ERR_INSTANCE_DIED')
      assert.equal(body.reason, reason)
    }
    await abuse(t, '/oom', 'oom-killed', died('oom-killed'))
    await abuse(t, '/forkbomb', 'pids-limit', died('pids-limit'))
    // The function sees ENOSPC at its disk limit and answers; the instance is recycled after.
    await abuse(t, '/fill', 'disk-full', (res) => {
      assert.equal(res.status, 507, res.text)
      const body = JSON.parse(res.text) as { written: number; error: string }
      assert.equal(body.error, 'ENOSPC')
      assert.ok(body.written <= 16 * MiB && body.written >= 8 * MiB, `wrote ${body.written}`)
    })
    // A spin keeps its CPU quota; the request's timeout (2 s) is a 504 and recycles the instance.
    await abuse(t, '/spin', 'request-timeout', (res) => {
      assert.equal(res.status, 504, res.text)
      assert.equal((JSON.parse(res.text) as { code: string }).code, 'ERR_GATEWAY_TIMEOUT')
    })
  })
})
