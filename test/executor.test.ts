import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, stat, truncate } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import {
  ALLOWED_DEVICES,
  CGROUP_ROOT,
  hierarchyWith,
  readCgroupLayout,
} from '../executor/adapters/cgroups.ts'
import { httpOnce } from '../executor/adapters/probe.ts'
import { cgroupPath } from '../executor/sandbox/sandbox.ts'
import { loadFunctionDefs, type FunctionDef } from '../shared/functions.ts'
import { createTestExecutor, type TestExecutor } from './support/executor.ts'
import { flipMiddleByte } from './support/files.ts'
import { createTestHost, type TestHost } from './support/host.ts'
import { isCI, requireServices } from './support/integration.ts'
import { hostResources, leakedSince, NO_LEAKS, type HostResources } from './support/leaks.ts'

const samples = await loadFunctionDefs('functions')
const execFileAsync = promisify(execFile)
const fixtures = await loadFunctionDefs(join(import.meta.dirname, 'fixtures', 'functions'))

/**
 * The preparation of `fn` once every recheck an earlier start scheduled has run: a recheck landing
 * after a test corrupted the snapshot would find the corruption before the path the test checks.
 */
async function settledPreparation(e: TestExecutor, fn: FunctionDef) {
  await new Promise((r) => setTimeout(r, e.config.INITLESS_RECHECK_DELAY + 100))
  return e.instances.prepare(fn)
}
const pyOk = fixtures.functions.find((f) => f.name === 'py-ok')!
// py-ok with a pre-started pool of one sandbox, restored lazily.
const pyPool: FunctionDef = {
  ...pyOk,
  name: 'py-pool',
  manifest: {
    ...pyOk.manifest,
    name: 'py-pool',
    scaling: { ...pyOk.manifest.scaling, poolSize: 1 },
    restore: { ...pyOk.manifest.restore, policy: 'lazy' },
  },
}
const functions: FunctionDef[] = [...samples.functions.filter((f) => f.name === 'flask-table'), pyOk, pyPool]

/** Command lines of running `criu lazy-pages` daemons whose work dir is under `stateDir`. */
async function lazyPagesDaemons(stateDir: string): Promise<string[]> {
  const found: string[] = []
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    const argv = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
    const args = argv.split('\0')
    if (args.includes('lazy-pages') && args.some((a) => a.startsWith(stateDir))) found.push(args.join(' '))
  }
  return found
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

describe('executor: restore worker, registry, reaper', () => {
  let th: TestHost | undefined
  let ex: TestExecutor | undefined
  let start: HostResources | undefined
  const resources = () =>
    hostResources({ runcRoot: th!.config.INITLESS_RUNC_ROOT, stateDir: th!.config.INITLESS_STATE_DIR })

  before(async () => {
    if (process.getuid?.() !== 0 && !isCI) return
    th = await createTestHost()
    start = resources()
    ex = await createTestExecutor(th, functions)
  })
  after(async () => {
    if (!th || !ex) return
    await ex.close()
    const leaks = leakedSince(start!, resources())
    await th.dispose()
    assert.deepEqual(leaks, NO_LEAKS)
  })

  test('3 concurrent lazy restores of flask-table from one snapshot, each in its own namespace', async (t) => {
    if (!requireServices(t) || !ex) return
    const results = await Promise.all([1, 2, 3].map(() => ex!.restore('flask-table', { runtime: 'lazy' })))
    assert.deepEqual(
      results.map((r) => r.runtime),
      ['lazy', 'lazy', 'lazy'],
    )
    const hosts = new Set(results.map((r) => r.address.host))
    assert.equal(hosts.size, 3, 'three distinct addresses')
    for (const r of results) {
      const res = await httpOnce(r.address.host, r.address.port, '/?key=888888')
      assert.equal(res.status, 200)
      assert.equal(res.body.trim(), '{"value": 888888}')
      assert.ok(r.phases.restoreMs > 0 && r.phases.readyMs >= 0)
    }
    const records = await ex.registry.list('flask-table')
    assert.deepEqual(records.map((r) => r.state).sort(), ['ready', 'ready', 'ready'])
    const live = ex.instances.live().filter((i) => i.fn === 'flask-table')
    assert.equal(
      new Set(live.map((i) => i.sandbox?.netns.name)).size,
      3,
      'one network namespace per instance',
    )
    for (const r of results) await ex.instances.stop(r.instanceId, 'test')
    assert.deepEqual(await ex.registry.list('flask-table'), [])
  })

  test("a restored instance sees its own cgroup's limits; its CPU limit is set once CRIU is done", async (t) => {
    if (!requireServices(t) || !ex) return
    const r = await ex.restore('py-ok', { runtime: 'eager' })
    try {
      const inst = ex.instances.live().find((i) => i.id === r.instanceId)
      assert.ok(inst?.pid, 'restored instance has a pid')
      const layout = await readCgroupLayout()
      // Paths inside the container, read through its root (its mount namespace) from the host.
      const inside = (p: string) =>
        readFile(`/proc/${inst.pid}/root${CGROUP_ROOT}/${p}`, 'utf8').then((s) => s.trim())
      const host = (p: string) => readFile(`${CGROUP_ROOT}/${p}`, 'utf8').then((s) => s.trim())
      const cg = cgroupPath(r.instanceId)
      // CRIU restored it directly (cgroup v1, or v2 with the device filter): the executor set what
      // runc would have (no swap, pids, devices), checked below.
      assert.ok(inst.sandbox?.direct, 'restored by criu restore, not runc restore')
      /** Whether a process in the instance's device cgroup may open `dev` (`opened` or the error). */
      const opens = (procs: string, dev: string) =>
        execFileAsync('sh', ['-c', `echo $$ > ${procs} && exec 3<${dev}`]).then(
          () => 'opened',
          (err: { stderr?: string }) => err.stderr ?? 'failed',
        )
      // A kmsg node of the test's own (c 1:11): a host's /dev need not have one (a container's).
      const nodes = await mkdtemp(join(tmpdir(), 'initless-devices-'))
      t.after(() => rm(nodes, { recursive: true, force: true }))
      const kmsg = join(nodes, 'kmsg')
      await execFileAsync('mknod', [kmsg, 'c', '1', '11'])
      // py-ok: default resources, 512Mi and 1 CPU.
      if (layout.v2) {
        assert.equal(await inside('memory.max'), String(512 * 1024 * 1024))
        assert.equal(await inside('cpu.max'), '100000 100000')
        assert.equal(await host(`${cg}/cpu.max`), '100000 100000')
        assert.deepEqual((await inside('cgroup.procs')).split('\n'), [String(inst.pid)])
        assert.equal(await host(`${cg}/pids.max`), '4096')
        // memory.swap.max exists only with swap accounting.
        const swap = await host(`${cg}/memory.swap.max`).catch(() => undefined)
        if (swap !== undefined) assert.equal(swap, '0')
        // The device filter holds: in that cgroup /dev/null opens, a kmsg node (c 1:11) does not.
        const procs = `${CGROUP_ROOT}${cg}/cgroup.procs`
        assert.equal(await opens(procs, '/dev/null'), 'opened')
        assert.match(await opens(procs, kmsg), /Operation not permitted/)
      } else {
        const cpu = hierarchyWith(layout, 'cpu')!
        const memory = hierarchyWith(layout, 'memory')!
        assert.equal(await inside(`${memory}/memory.limit_in_bytes`), String(512 * 1024 * 1024))
        assert.equal(await inside(`${cpu}/cpu.cfs_quota_us`), '100000')
        assert.equal(await host(`${cpu}${cg}/cpu.cfs_quota_us`), '100000')
        // The container's /sys/fs/cgroup is its own cgroup, not the host's root (pids as the reader sees them).
        assert.deepEqual((await inside(`${memory}/cgroup.procs`)).split('\n'), [String(inst.pid)])
        const pids = hierarchyWith(layout, 'pids')!
        const devices = hierarchyWith(layout, 'devices')!
        assert.equal(await host(`${memory}${cg}/memory.memsw.limit_in_bytes`), String(512 * 1024 * 1024))
        assert.equal(await host(`${pids}${cg}/pids.max`), '4096')
        assert.deepEqual((await host(`${devices}${cg}/devices.list`)).split('\n'), [...ALLOWED_DEVICES])
        // And it holds: in that cgroup /dev/null opens, a kmsg node (c 1:11) does not.
        const procs = `${CGROUP_ROOT}/${devices}${cg}/cgroup.procs`
        assert.equal(await opens(procs, '/dev/null'), 'opened')
        assert.match(await opens(procs, kmsg), /Operation not permitted/)
      }
    } finally {
      await ex.instances.stop(r.instanceId, 'test')
    }
  })

  test('the pre-started pool: a sandbox and its lazy-pages daemon ready ahead, used by the next restore, then refilled', async (t) => {
    if (!requireServices(t) || !ex) return
    await ex.instances.fillPools()
    assert.equal(ex.instances.poolSize('py-pool'), 1)
    const daemons = () => lazyPagesDaemons(th!.config.INITLESS_STATE_DIR)
    assert.equal((await daemons()).length, 1, 'the pooled sandbox has its lazy-pages daemon waiting')
    const r = await ex.restore('py-pool')
    assert.equal(r.runtime, 'lazy')
    assert.equal(r.pooled, true)
    // The pool's sandbox has an id of its own; a sandbox prepared for a job is named after it.
    const sandboxOf = (id: string) => ex!.instances.live().find((i) => i.id === id)?.sandbox?.id
    assert.notEqual(sandboxOf(r.instanceId), r.instanceId)
    const res = await httpOnce(r.address.host, r.address.port, '/healthz')
    assert.equal(res.status, 200)
    // Refilled once the restore was done (in the background): one new sandbox, one new daemon.
    await waitFor(
      'the pool to refill',
      async () => (ex!.instances.poolSize('py-pool') === 1 ? true : undefined),
      20_000,
    )
    const noPool = await ex.restore('py-pool', { noPool: true })
    assert.equal(noPool.pooled, false)
    assert.equal(sandboxOf(noPool.instanceId), noPool.instanceId)
    // An eager restore may take the pooled sandbox: its daemon is not needed and is killed.
    const eager = await ex.restore('py-pool', { runtime: 'eager' })
    assert.equal(eager.pooled, true)
    for (const id of [r.instanceId, noPool.instanceId, eager.instanceId]) await ex.instances.stop(id, 'test')
    await waitFor(
      'the pool to refill',
      async () => (ex!.instances.poolSize('py-pool') === 1 ? true : undefined),
      20_000,
    )
    // Whatever remains is the pool's: its one daemon (those of stopped instances are gone).
    await waitFor(
      'only the pool daemon to remain',
      async () => ((await daemons()).length === 1 ? true : undefined),
      10_000,
    )
    // Draining the pool releases its sandbox and kills its daemon.
    await ex.instances.stopAll('test over')
    assert.equal(ex.instances.poolSize('py-pool'), 0)
    assert.deepEqual(await daemons(), [])
  })

  test('idle instances are reaped to zero', async (t) => {
    if (!requireServices(t) || !ex) return
    const a = await ex.restore('py-ok')
    const b = await ex.restore('py-ok')
    assert.equal((await ex.registry.list('py-ok')).length, 2)
    // py-ok's idle timeout is 2 s; nothing touches the instances.
    assert.deepEqual(await ex.reaper.tick(), [], 'nothing is idle yet')
    await new Promise((r) => setTimeout(r, 2200))
    const stopped = await ex.reaper.tick()
    assert.deepEqual(stopped.map((s) => s.id).sort(), [a.instanceId, b.instanceId].sort())
    assert.ok(stopped.every((s) => s.reason === 'idle'))
    assert.deepEqual(await ex.registry.list('py-ok'), [])
    assert.equal(ex.instances.live().length, 0)
    assert.deepEqual(leakedSince(start!, resources()), NO_LEAKS)
  })

  test('an instance whose process dies is removed within one reaper tick; the next restore starts anew', async (t) => {
    if (!requireServices(t) || !ex) return
    const first = await ex.restore('py-ok')
    const inst = ex.instances.live().find((i) => i.id === first.instanceId)!
    process.kill(inst.pid!, 'SIGKILL')
    const stopped = await waitFor(
      'the reaper to notice',
      async () => {
        const s = await ex!.reaper.tick()
        return s.length ? s : undefined
      },
      2000,
    )
    assert.deepEqual(stopped, [{ id: first.instanceId, reason: 'dead' }])
    assert.deepEqual(await ex.registry.list('py-ok'), [])
    const second = await ex.restore('py-ok')
    assert.notEqual(second.instanceId, first.instanceId)
    const res = await httpOnce(second.address.host, second.address.port, '/')
    assert.equal(res.body, 'hello 3\n')
    await ex.instances.stop(second.instanceId, 'test')
  })

  test('a corrupted snapshot is marked broken, the request is served by booting, and it is re-baked', async (t) => {
    if (!requireServices(t) || !ex || !th) return
    const fn = functions.find((f) => f.name === 'py-ok')!
    const { image, snapshot } = await settledPreparation(ex, fn)
    assert.ok(snapshot)
    const pages = (await readdir(snapshot.imagesDir)).find((n) => n.startsWith('pages-'))!
    await truncate(join(snapshot.imagesDir, pages), 4096)
    const result = await ex.restore('py-ok')
    assert.equal(result.runtime, 'boot', 'fell back to a plain boot')
    const res = await httpOnce(result.address.host, result.address.port, '/')
    assert.equal(res.body, 'hello 0\n', 'a booted instance has no warm-up state')
    const rebaked = await waitFor(
      'a new snapshot',
      async () => {
        const p = await ex!.instances.prepare(fn)
        return p.snapshot && p.snapshot.meta.key === snapshot.meta.key && p.snapshot.dir !== snapshot.dir
          ? p
          : p.snapshot?.meta.createdAt !== snapshot.meta.createdAt
            ? p
            : undefined
      },
      60_000,
    )
    assert.equal(rebaked.image.id, image.id)
    await ex.instances.stop(result.instanceId, 'test')
    const again = await ex.restore('py-ok')
    assert.equal(again.runtime, 'eager', 'the re-baked snapshot restores again')
    await ex.instances.stop(again.instanceId, 'test')
  })

  test('a byte flipped mid pages file (same size) is caught before restore, served by boot, re-baked', async (t) => {
    if (!requireServices(t) || !ex || !th) return
    const fn = functions.find((f) => f.name === 'py-ok')!
    const { snapshot } = await settledPreparation(ex, fn)
    assert.ok(snapshot)
    const pagesName = (await readdir(snapshot.imagesDir)).find((n) => n.startsWith('pages-'))!
    const pages = join(snapshot.imagesDir, pagesName)
    const sizeBefore = (await stat(pages)).size
    await flipMiddleByte(pages)
    assert.equal((await stat(pages)).size, sizeBefore)
    const result = await ex.restore('py-ok')
    assert.equal(result.runtime, 'boot', 'fell back to a plain boot')
    const res = await httpOnce(result.address.host, result.address.port, '/')
    assert.equal(res.body, 'hello 0\n')
    // The checksum check refused it, not a failed CRIU restore: its reason says so.
    const fnDir = join(th.config.INITLESS_STATE_DIR, 'snapshots', 'py-ok')
    const reasons = async () => {
      const found: string[] = []
      for (const name of await readdir(fnDir))
        found.push(await readFile(join(fnDir, name, 'broken'), 'utf8').catch(() => ''))
      return found.join('\n')
    }
    assert.match(
      await reasons(),
      new RegExp(`images/${pagesName.replace('.', '\\.')}: sha256 checksum mismatch`),
    )
    const rebaked = await waitFor(
      'a new snapshot',
      async () => {
        const p = await ex!.instances.prepare(fn)
        return p.snapshot && p.snapshot.meta.createdAt !== snapshot.meta.createdAt ? p : undefined
      },
      60_000,
    )
    assert.ok(await th.host.store.usable(rebaked.snapshot!))
    await ex.instances.stop(result.instanceId, 'test')
    const again = await ex.restore('py-ok')
    assert.equal(again.runtime, 'eager', 'the re-baked snapshot restores again')
    await ex.instances.stop(again.instanceId, 'test')
  })

  test('the scrub re-reads every current snapshot; a corrupt one is marked broken and re-baked', async (t) => {
    if (!requireServices(t) || !ex) return
    const fn = functions.find((f) => f.name === 'py-ok')!
    const { snapshot } = await settledPreparation(ex, fn)
    const clean = await ex.instances.scrub()
    assert.ok(clean.length && clean.every((r) => r.ok), JSON.stringify(clean))
    assert.ok(clean.some((r) => r.fn === 'py-ok'))
    const pages = (await readdir(snapshot!.imagesDir)).find((n) => n.startsWith('pages-'))!
    await flipMiddleByte(join(snapshot!.imagesDir, pages))
    const found = await ex.instances.scrub()
    const bad = found.find((r) => r.fn === 'py-ok')!
    assert.equal(bad.ok, false)
    assert.match(bad.problem ?? '', /sha256 checksum mismatch/)
    await waitFor(
      'a new snapshot',
      async () => {
        const p = await ex!.instances.prepare(fn)
        return p.snapshot && p.snapshot.meta.createdAt !== snapshot!.meta.createdAt ? p : undefined
      },
      60_000,
    )
    const again = await ex.restore('py-ok')
    assert.equal(again.runtime, 'eager', 'the re-baked snapshot restores')
    await ex.instances.stop(again.instanceId, 'test')
  })

  test('a restore uses the last preparation while its snapshot is current; a re-bake takes over at once', async (t) => {
    if (!requireServices(t) || !ex || !th) return
    const fn = functions.find((f) => f.name === 'py-ok')!
    const lowerOf = (id: string) => ex!.instances.live().find((i) => i.id === id)?.sandbox?.lowers[0]
    const { image, snapshot } = await ex.instances.prepare(fn)
    const first = await ex.restore('py-ok')
    assert.equal(lowerOf(first.instanceId), snapshot!.upperDir)
    await ex.instances.stop(first.instanceId, 'test')
    // A forced re-bake (what `initless bake` or the admin API asks for) retires the snapshot.
    // Same inputs, same place: only its contents are new.
    const { snapshot: fresh } = await th.host.baker.bake(fn, image, { force: true })
    assert.notEqual(fresh.meta.createdAt, snapshot!.meta.createdAt)
    const second = await ex.restore('py-ok')
    assert.equal(second.runtime, 'eager', 'restored from the new snapshot, not a boot fallback')
    assert.equal(lowerOf(second.instanceId), fresh.upperDir)
    assert.ok(await th.host.store.usable(fresh), 'the new snapshot was not marked broken')
    await ex.instances.stop(second.instanceId, 'test')
  })
})
