/**
 * Frozen standby (scaling.standby) against the real stack: the executor keeps an instance restored
 * and frozen in the cgroup freezer without any request; a request is answered by it without a
 * restore, thawed; another standby replaces it; a deploy replaces the standby with the new version;
 * a scale to zero and a delete remove it.
 */
import assert from 'node:assert/strict'
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { deployFunction, type AdminTarget } from '../cli/deploy-client.ts'
import type { InstanceRecord } from '../shared/contracts.ts'
import { parseServerTiming, ROOT, startE2eStack, type E2eStack } from './support/e2e.ts'
import { requireServices } from './support/integration.ts'

const FN = 'hello-standby'
const CGROUP = '/sys/fs/cgroup'

let stack: E2eStack | undefined
let dir = ''
let admin: AdminTarget

/** A copy of hello-node named FN with one standby instance, whose greeting says `tag`. */
async function writeFunction(tag: string) {
  const fnDir = join(dir, FN)
  await rm(fnDir, { recursive: true, force: true })
  await cp(join(ROOT, 'functions', 'hello-node'), fnDir, { recursive: true })
  const manifest = (await readFile(join(fnDir, 'function.yaml'), 'utf8'))
    .replace('name: hello-node', `name: ${FN}`)
    .replace('  maxInstances: 5', '  maxInstances: 3\n  standby: 1')
  await writeFile(join(fnDir, 'function.yaml'), manifest)
  const server = (await readFile(join(fnDir, 'server.js'), 'utf8')).replace(
    "message: 'hello from node'",
    `message: 'hello from node', tag: '${tag}'`,
  )
  await writeFile(join(fnDir, 'server.js'), server)
  return { name: FN, dir: fnDir }
}

/** The instance's freezer state: v1 `freezer.state`, v2 `cgroup.freeze` as FROZEN/THAWED. */
async function freezerState(id: string): Promise<string> {
  const v1 = join(CGROUP, 'freezer', 'initless', id, 'freezer.state')
  if (existsSync(v1)) return (await readFile(v1, 'utf8')).trim()
  const events = await readFile(join(CGROUP, 'initless', id, 'cgroup.events'), 'utf8')
  return /^frozen 1$/m.test(events) ? 'FROZEN' : 'THAWED'
}

/** CPU time the instance's cgroup used (ns). */
async function cpuNs(id: string): Promise<number> {
  const v1 = join(CGROUP, 'cpuacct', 'initless', id, 'cpuacct.usage')
  if (existsSync(v1)) return Number((await readFile(v1, 'utf8')).trim())
  const stat = await readFile(join(CGROUP, 'initless', id, 'cpu.stat'), 'utf8')
  return Number(/^usage_usec (\d+)$/m.exec(stat)?.[1] ?? 0) * 1000
}

const frozenOf = (list: readonly InstanceRecord[]) => list.filter((r) => r.state === 'frozen' && r.address)

async function get() {
  const res = await stack!.request('GET', `/fn/${FN}/`)
  return {
    status: res.status,
    text: res.text,
    timing: parseServerTiming(res.headers['server-timing']),
    tag: res.status === 200 ? (JSON.parse(res.text) as { tag?: string }).tag : undefined,
  }
}

describe('frozen standby', () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'initless-standby-'))
  })
  after(async () => {
    await stack?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  test('a frozen instance waits without CPU, answers a request thawed, and is replaced', async (t) => {
    if (!requireServices(t)) return
    const empty = await mkdtemp(join(tmpdir(), 'initless-nofns-'))
    after(() => rm(empty, { recursive: true, force: true }))
    stack = await startE2eStack({
      env: {
        INITLESS_FUNCTIONS_DIR: empty,
        INITLESS_DRAIN_GRACE: '500ms',
        INITLESS_REGISTRY_REFRESH: '500ms',
        INITLESS_REAP_INTERVAL: '300ms',
      },
    })
    admin = { url: stack.url, token: stack.adminToken }
    const deployed = await deployFunction(admin, await writeFunction('v1'))
    assert.equal(deployed.status, 'deployed')

    const [standby] = frozenOf(await stack.waitForInstances(FN, (l) => frozenOf(l).length === 1, 60_000))
    assert.ok(standby)
    assert.equal(standby.version, deployed.version)
    assert.ok((standby.memoryBytes ?? 0) > 1024 * 1024, `memory held: ${standby.memoryBytes}`)
    assert.equal(await freezerState(standby.id), 'FROZEN')
    const cpuBefore = await cpuNs(standby.id)
    await new Promise((r) => setTimeout(r, 1000))
    assert.equal(await cpuNs(standby.id), cpuBefore, 'no CPU used while frozen')
    assert.equal((await stack.instances(FN)).length, 1, 'no other instance')

    const mark = stack.executor.mark()
    const t0 = performance.now()
    const res = await get()
    t.diagnostic(`request served by the thawed standby in ${(performance.now() - t0).toFixed(1)} ms`)
    assert.equal(res.status, 200, res.text)
    assert.equal(res.tag, 'v1')
    assert.ok(res.timing.has('thawed'), `Server-Timing: ${[...res.timing.keys()].join(',')}`)
    assert.ok(!res.timing.has('cold'))
    assert.equal(await freezerState(standby.id), 'THAWED')
    const thawed = (await stack.instances(FN)).find((r) => r.id === standby.id)
    assert.equal(thawed?.state, 'ready')
    assert.equal(typeof thawed?.thawedAt, 'number')
    await stack.executor.waitForLog((r) => r.msg === 'standby thawed' && r.id === standby.id, 5000, mark)
    const restores = stack.executor.records(mark).filter((r) => r.msg === 'instance ready')
    assert.deepEqual(restores, [], 'answered without a restore')

    // A new standby takes its place; the thawed one serves warm.
    const list = await stack.waitForInstances(FN, (l) => frozenOf(l).some((r) => r.id !== standby.id), 60_000)
    assert.equal(list.length, 2)
    const warm = await get()
    assert.equal(warm.status, 200)
    assert.ok(warm.timing.has('warm'))
  })

  test('a deploy replaces the standby with the new version; that version answers thawed', async (t) => {
    if (!requireServices(t) || !stack) return
    const old = frozenOf(await stack.instances(FN))
    assert.equal(old.length, 1)
    const v2 = await deployFunction(admin, await writeFunction('v2'))
    assert.equal(v2.status, 'deployed')
    const list = await stack.waitForInstances(
      FN,
      (l) =>
        frozenOf(l).length === 1 &&
        frozenOf(l)[0]?.version === v2.version &&
        !l.some((r) => r.id === old[0]?.id),
      120_000,
    )
    assert.ok(list.every((r) => r.state !== 'frozen' || r.version === v2.version))
    // The v1 instance that served requests drains; requests go to the v2 standby, thawed.
    const res = await get()
    assert.equal(res.status, 200, res.text)
    assert.equal(res.tag, 'v2')
    assert.ok(res.timing.has('thawed') || res.timing.has('warm'), [...res.timing.keys()].join(','))
  })

  test('scale to zero stops the frozen instance (then kept again); delete leaves none', async (t) => {
    if (!requireServices(t) || !stack) return
    const [before] = frozenOf(await stack.waitForInstances(FN, (l) => frozenOf(l).length === 1, 60_000))
    assert.ok(before)
    const scaled = await stack.admin('POST', `/functions/${FN}/scale`, { instances: 0 })
    assert.equal(scaled.status, 202)
    await stack.waitForInstances(FN, (l) => !l.some((r) => r.id === before.id), 30_000)
    // The record goes first, then the sandbox: its cgroup follows within moments.
    const deadline = Date.now() + 10_000
    while (existsSync(join(CGROUP, 'freezer', 'initless', before.id)) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50))
    assert.ok(!existsSync(join(CGROUP, 'freezer', 'initless', before.id)), 'its cgroup is gone')
    // standby 1 keeps one while the function is deployed, as minInstances does after a scale to zero.
    await stack.waitForInstances(FN, (l) => frozenOf(l).length === 1, 60_000)

    const del = await stack.admin('DELETE', `/functions/${FN}`)
    assert.equal(del.status, 200)
    await stack.waitForInstances(FN, (l) => l.length === 0, 30_000)
    await new Promise((r) => setTimeout(r, 1500))
    assert.deepEqual(await stack.instances(FN), [], 'no standby restored for a deleted function')
  })
})
