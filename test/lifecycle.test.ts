/**
 * The function lifecycle against the real stack (executor + gateway processes, cli/launcher.ts):
 * deploy into a running stack, zero failed requests while a function is redeployed under load,
 * rollback without a build or a bake, failed deploys that leave the active version serving, delete
 * that leaves nothing, and a second gateway on the same Redis that switches too.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { cp, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { deployFunction, type AdminTarget } from '../cli/deploy-client.ts'
import { freePort } from '../cli/launcher.ts'
import { isInitlessError } from '../shared/errors.ts'
import { createRedis } from '../shared/redis.ts'
import {
  http,
  ROOT,
  startE2eStack,
  startProcess,
  STATE_DIR,
  type E2eStack,
  type ManagedProcess,
} from './support/e2e.ts'
import { REDIS_URL, requireServices } from './support/integration.ts'

const FN = 'hello-life'
const GRACE_MS = 1000

let stack: E2eStack | undefined
let dir = ''
let admin: AdminTarget

/** A copy of hello-node named FN whose greeting says `tag`; `edit` changes more. */
async function writeFunction(
  tag: string,
  edit: {
    manifest?: (m: string) => string
    dockerfile?: (d: string) => string
    server?: (s: string) => string
  } = {},
) {
  const fnDir = join(dir, FN)
  await rm(fnDir, { recursive: true, force: true })
  await cp(join(ROOT, 'functions', 'hello-node'), fnDir, { recursive: true })
  const manifest = (await readFile(join(fnDir, 'function.yaml'), 'utf8')).replace(
    'name: hello-node',
    `name: ${FN}`,
  )
  await writeFile(join(fnDir, 'function.yaml'), edit.manifest ? edit.manifest(manifest) : manifest)
  const server = (await readFile(join(fnDir, 'server.js'), 'utf8')).replace(
    "message: 'hello from node'",
    `message: 'hello from node', tag: '${tag}'`,
  )
  await writeFile(join(fnDir, 'server.js'), edit.server ? edit.server(server) : server)
  if (edit.dockerfile) {
    const d = await readFile(join(fnDir, 'Dockerfile'), 'utf8')
    await writeFile(join(fnDir, 'Dockerfile'), edit.dockerfile(d))
  }
  return { name: FN, dir: fnDir }
}

interface Sample {
  readonly startedAt: number
  readonly status: number
  readonly tag?: string
  readonly error?: string
}

/** ~`rate` requests per second to FN on `port` until stopped. */
function loadGenerator(port: number, rate = 50) {
  const samples: Sample[] = []
  const pending = new Set<Promise<void>>()
  const timer = setInterval(() => {
    const startedAt = Date.now()
    const p = http(port, 'GET', `/fn/${FN}/`, { timeoutMs: 30_000 })
      .then(
        (res) => {
          let tag: string | undefined
          try {
            tag = (JSON.parse(res.text) as { tag?: string }).tag
          } catch {
            tag = undefined
          }
          samples.push({
            startedAt,
            status: res.status,
            ...(tag ? { tag } : {}),
            ...(res.status === 200 ? {} : { error: res.text }),
          })
        },
        (err: unknown) => void samples.push({ startedAt, status: 0, error: String(err) }),
      )
      .finally(() => pending.delete(p))
    pending.add(p)
  }, 1000 / rate)
  return {
    samples,
    async stop() {
      clearInterval(timer)
      await Promise.all([...pending])
      return samples
    },
  }
}

const failures = (samples: readonly Sample[]) => samples.filter((s) => s.status !== 200)

async function get(port = stack!.port) {
  const res = await http(port, 'GET', `/fn/${FN}/`)
  return {
    status: res.status,
    text: res.text,
    tag: res.status === 200 ? (JSON.parse(res.text) as { tag?: string }).tag : undefined,
  }
}

describe('function lifecycle on a running stack', () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'initless-life-'))
  })
  after(async () => {
    await stack?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  test('a deployed function answers without a restart; it was 404 before; the same deploy is a no-op', async (t) => {
    if (!requireServices(t)) return
    const empty = await mkdtemp(join(tmpdir(), 'initless-nofns-'))
    after(() => rm(empty, { recursive: true, force: true }))
    stack = await startE2eStack({
      env: {
        INITLESS_FUNCTIONS_DIR: empty,
        INITLESS_DRAIN_GRACE: `${GRACE_MS}ms`,
        INITLESS_REGISTRY_REFRESH: '500ms',
        INITLESS_KEEP_VERSIONS: '3',
      },
    })
    admin = { url: stack.url, token: stack.adminToken }
    const before404 = await http(stack.port, 'GET', `/fn/${FN}/`)
    assert.equal(before404.status, 404)
    assert.equal(JSON.parse(before404.text).code, 'ERR_FUNCTION_NOT_FOUND')
    const pids = [stack.executor.child.pid, stack.gateway.child.pid]

    const r = await deployFunction(admin, await writeFunction('v1'))
    assert.equal(r.status, 'deployed')
    const res = await get()
    assert.equal(res.status, 200, res.text)
    assert.equal(res.tag, 'v1')
    assert.deepEqual([stack.executor.child.pid, stack.gateway.child.pid], pids)
    assert.ok(stack.executor.isRunning() && stack.gateway.isRunning(), 'no process restarted')

    const again = await deployFunction(admin, await writeFunction('v1'))
    assert.equal(again.status, 'unchanged')
    assert.equal(again.version, r.version)
  })

  test('zero failed requests while the function is redeployed under load; old instances drain', async (t) => {
    if (!requireServices(t) || !stack) return
    const load = loadGenerator(stack.port)
    await new Promise((r) => setTimeout(r, 1000))
    const v2 = await deployFunction(admin, await writeFunction('v2'))
    const activatedBy = Date.now()
    assert.equal(v2.status, 'deployed')
    await new Promise((r) => setTimeout(r, 2000))
    const samples = await load.stop()
    assert.deepEqual(failures(samples), [], 'every request succeeded')
    assert.ok(samples.length >= 100, `${samples.length} requests sent`)
    const firstNew = samples.filter((s) => s.tag === 'v2').sort((a, b) => a.startedAt - b.startedAt)[0]
    assert.ok(firstNew, 'the new version answered')
    assert.ok(firstNew.startedAt <= activatedBy + 1000, 'the switch came with the activation')
    const wentBack = samples.filter((s) => s.startedAt > firstNew.startedAt + 20 && s.tag !== 'v2')
    assert.deepEqual(wentBack, [], 'after the switch no request went to the old version')
    t.diagnostic(`${samples.length} requests, ${samples.filter((s) => s.tag === 'v1').length} answered by v1`)
    // The old version's instances are gone within the drain grace plus their last requests.
    const t0 = Date.now()
    await stack.waitForInstances(
      FN,
      (list) => list.length > 0 && list.every((i) => i.version === v2.version),
      GRACE_MS + 5000,
    )
    t.diagnostic(`old instances gone ${Date.now() - t0} ms after the load stopped`)
  })

  test('rollback re-activates the kept version in under a second without a build or a bake', async (t) => {
    if (!requireServices(t) || !stack) return
    const mark = stack.executor.mark()
    const started = Date.now()
    const res = await stack.admin<{ version: string; previous: string; ms: number }>(
      'POST',
      `/functions/${FN}/rollback`,
      {},
    )
    const ms = Date.now() - started
    assert.equal(res.status, 200, JSON.stringify(res.body))
    t.diagnostic(`rollback answered in ${ms} ms (registry ${res.body.ms} ms)`)
    assert.ok(ms < 1000, `rollback took ${ms} ms`)
    const answer = await get()
    assert.equal(answer.tag, 'v1')
    const built = stack.executor
      .records(mark)
      .filter((r) => r.msg === 'image build started' || r.module === 'bake' || r.msg === 'deploy started')
    assert.deepEqual(built, [], 'nothing was built or baked')
  })

  test('failed deploys (manifest, build, bake) leave the active version serving with 0 errors', async (t) => {
    if (!requireServices(t) || !stack) return
    const load = loadGenerator(stack.port, 20)
    const cases = [
      { step: 'manifest', edit: { manifest: (m: string) => m.replace('port: 8080', 'port: not-a-port') } },
      {
        step: 'build',
        edit: {
          dockerfile: (d: string) =>
            d.replace('WORKDIR /app', 'RUN echo broken-build >&2 && false\nWORKDIR /app'),
        },
      },
      {
        step: 'bake',
        edit: {
          server: (s: string) => `console.log('crashing on purpose'); process.exit(3)\n${s}`,
          manifest: (m: string) => m.replace('timeout: 30s', 'timeout: 5s'),
        },
      },
    ] as const
    for (const c of cases) {
      await assert.rejects(
        deployFunction(admin, await writeFunction(`bad-${c.step}`, c.edit)),
        (err: unknown) => {
          assert.ok(isInitlessError(err, 'ERR_DEPLOY_FAILED'), String(err))
          const problem = err.details.problem as { step: string; output?: string }
          assert.equal(problem.step, c.step)
          if (c.step === 'build') assert.match(problem.output ?? '', /broken-build/)
          if (c.step === 'bake') assert.match(problem.output ?? '', /crashing on purpose/)
          return true
        },
      )
      assert.equal((await get()).tag, 'v1', `still v1 after the failed ${c.step}`)
    }
    const samples = await load.stop()
    assert.deepEqual(failures(samples), [])
  })

  test('two gateways on one Redis both switch on an activation', async (t) => {
    if (!requireServices(t) || !stack) return
    const port = await freePort()
    const second: ManagedProcess = startProcess('gateway-2', 'gateway', {
      env: { ...stack.env, INITLESS_GATEWAY_PORT: String(port) },
    })
    after(() => second.stop())
    await second.waitForLog((r) => r.msg === 'gateway listening', 30_000)
    assert.equal((await get(port)).tag, 'v1')
    const versions = await stack.admin<{ versions: { version: string; state: string; isActive: boolean }[] }>(
      'GET',
      `/functions/${FN}/versions`,
    )
    const target = versions.body.versions.find((v) => v.state === 'ready' && !v.isActive)
    assert.ok(target)
    const res = await stack.admin('POST', `/functions/${FN}/rollback`, { version: target.version })
    const activated = Date.now()
    assert.equal(res.status, 200)
    const switched = async (p: number) => {
      for (;;) {
        if ((await get(p)).tag === 'v2') return Date.now() - activated
        if (Date.now() - activated > 5000) throw new Error(`gateway on ${p} did not switch`)
        await new Promise((r) => setTimeout(r, 5))
      }
    }
    const [a, b] = await Promise.all([switched(stack.port), switched(port)])
    t.diagnostic(`switch seen ${a} ms (gateway 1) and ${b} ms (gateway 2) after the rollback answered`)
    assert.ok(Math.abs(a - b) < 1000)
  })

  test('delete: 404 problem+json afterwards, nothing left', async (t) => {
    if (!requireServices(t) || !stack) return
    const mark = stack.executor.mark()
    const res = await stack.admin('DELETE', `/functions/${FN}`)
    assert.equal(res.status, 200)
    const gone = await http(stack.port, 'GET', `/fn/${FN}/`)
    assert.equal(gone.status, 404)
    assert.equal(gone.headers['content-type'], 'application/problem+json')
    assert.equal(JSON.parse(gone.text).code, 'ERR_FUNCTION_NOT_FOUND')
    await stack.waitForInstances(FN, (list) => list.length === 0, GRACE_MS + 10_000)
    // The executor removes snapshots, images and contexts once the instances are gone.
    await stack.executor.waitForLog(
      (r) => r.msg === 'deleted function removed from this host' && r.fn === FN,
      30_000,
      mark,
    )
    const prefix = stack.env.INITLESS_KEY_PREFIX!
    const redis = createRedis(REDIS_URL, { name: 'test-lifecycle' })
    try {
      const deadline = Date.now() + 10_000
      let left: string[] = []
      do {
        left = (await redis.keys(`${prefix}:*`)).filter((k) => k.includes(FN))
        if (!left.length) break
        await new Promise((r) => setTimeout(r, 200))
      } while (Date.now() < deadline)
      assert.deepEqual(left, [], 'no Redis key of the function')
    } finally {
      redis.disconnect()
    }
    const snapshots = await stat(join(STATE_DIR, 'snapshots', FN)).then(
      () => true,
      () => false,
    )
    assert.equal(snapshots, false, 'no snapshot left')
    const contexts = await stat(join(STATE_DIR, 'contexts', FN)).then(
      () => true,
      () => false,
    )
    assert.equal(contexts, false, 'no build context left')
    const images = execFileSync('docker', ['images', '-q', `initless/fn-${FN}`], { encoding: 'utf8' }).trim()
    assert.equal(images, '', 'no image left')
  })
})
