/**
 * The default stack keeps the asynchronous invocation queues on the queue Redis provisioning
 * starts (appendfsync always), not on the registry's. `initless up` runs for real, told nothing
 * about queues but provisioning's INITLESS_ASYNC_REDIS_PORT, which points at this test's own
 * redis-server configured as scripts/provision.sh configures the queue Redis. An invocation
 * accepted there runs, and its BullMQ keys are in the queue Redis and none in the registry's (the
 * shared one on 6379, only read, under this test's own prefixes). `initless doctor` reports the
 * queue Redis: durable as provisioned, a warning for one on everysec.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { cp, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { createRedis, deleteKeys } from '../shared/redis.ts'
import { startCliUp, type CliUp } from './support/cli-up.ts'
import { freePort } from './support/e2e.ts'
import { REDIS_URL, requireServices } from './support/integration.ts'
import { startQueueRedis, type TestRedis } from './support/queue-redis.ts'

const exec = promisify(execFile)
const ROOT = join(import.meta.dirname, '..')
const CLI = join(ROOT, 'bin', 'initless.mjs')

/** Every key of `url` matching `pattern` (SCAN). */
async function keys(url: string, pattern: string): Promise<string[]> {
  const redis = createRedis(url, { name: 'test-queue-redis-keys' })
  try {
    const out: string[] = []
    let cursor = '0'
    do {
      const [next, found] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
      cursor = next
      out.push(...found)
    } while (cursor !== '0')
    return out
  } finally {
    redis.disconnect()
  }
}

interface Check {
  name: string
  ok: boolean
  warn?: string
  detail: string
  fix?: string
}

describe('the default stack: queues on the queue Redis provisioning starts', () => {
  const tag = randomBytes(4).toString('hex')
  const keyPrefix = `test-aqr-${tag}`
  const asyncPrefix = `{test-aqr-${tag}}`
  const queueName = `test-${randomUUID()}`
  let functionsDir = ''
  let redisDir = ''
  let everysecDir = ''
  let queue: TestRedis | undefined
  let everysec: TestRedis | undefined
  let env: NodeJS.ProcessEnv = {}
  let port = 0
  let up: CliUp | undefined

  before(async () => {
    if (process.getuid?.() !== 0) return
    functionsDir = await mkdtemp(join(tmpdir(), 'initless-aqr-fns-'))
    await cp(join(ROOT, 'functions', 'hello-node'), join(functionsDir, 'hello-node'), { recursive: true })
    redisDir = await mkdtemp(join(tmpdir(), 'initless-aqr-redis-'))
    everysecDir = await mkdtemp(join(tmpdir(), 'initless-aqr-everysec-'))
    port = await freePort()
    const inherited = { ...process.env }
    // Nothing says where the queues go but provisioning's port: the default is what is tested.
    delete inherited.INITLESS_ASYNC_REDIS_URL
    env = {
      ...inherited,
      INITLESS_REDIS_URL: REDIS_URL,
      INITLESS_FUNCTIONS_DIR: functionsDir,
      INITLESS_QUEUE_NAME: queueName,
      INITLESS_KEY_PREFIX: keyPrefix,
      INITLESS_ASYNC_PREFIX: asyncPrefix,
      INITLESS_HOST_ID: `aqr-${tag}`,
      INITLESS_GATEWAY_PORT: String(port),
      INITLESS_LOG_LEVEL: 'warn',
    }
  })
  after(async () => {
    // Its own process group: a failed test must not leave the executor and gateway running.
    up?.killGroup()
    await queue?.kill()
    await everysec?.kill()
    if (env.INITLESS_KEY_PREFIX) {
      const redis = createRedis(REDIS_URL, { name: 'test-aqr-cleanup' })
      await deleteKeys(redis, [`${keyPrefix}:*`, `bull:${queueName}:*`, `bull:${queueName}-deploy:*`])
      redis.disconnect()
    }
    for (const dir of [functionsDir, redisDir, everysecDir])
      if (dir) await rm(dir, { recursive: true, force: true })
  })

  test('initless up gives the gateway the queue Redis; an invocation lives there, not in the registry', async (t) => {
    if (!requireServices(t)) return
    queue = await startQueueRedis(redisDir)
    env.INITLESS_ASYNC_REDIS_PORT = String(queue.port)
    up = await startCliUp(env)
    assert.match(
      up.output(),
      new RegExp(
        `asynchronous invocations: queues on redis://127\\.0\\.0\\.1:${queue.port} \\(the queue Redis scripts/provision\\.sh starts\\), appendonly yes, appendfsync always`,
      ),
    )
    assert.doesNotMatch(up.output(), /warning: a 202 is not fsynced/)

    const url = `http://127.0.0.1:${port}`
    const res = await fetch(`${url}/async-function/hello-node/echo`, { method: 'POST', body: 'queued' })
    assert.equal(res.status, 202, await res.text())
    const id = res.headers.get('x-invocation-id') ?? ''
    assert.match(id, /^hello-node\./)
    const finishBy = Date.now() + 120_000
    let view: { state: string; result?: { status: number; body: string } } = { state: 'none' }
    while (!['succeeded', 'failed', 'dead'].includes(view.state)) {
      assert.ok(Date.now() < finishBy, `invocation ${id}: ${JSON.stringify(view)}`)
      await new Promise((r) => setTimeout(r, 200))
      view = (await (await fetch(`${url}/invocations/${id}`)).json()) as typeof view
    }
    assert.equal(view.state, 'succeeded', JSON.stringify(view))
    assert.equal(Buffer.from(view.result!.body, 'base64').toString(), 'queued')

    // The invocation's queue and job are in the queue Redis; the registry's Redis has this stack's
    // registry keys (so it is the one in use) and none of the queues'.
    const queued = await keys(queue.url, `${asyncPrefix}:*`)
    assert.ok(
      queued.some((k) => k.startsWith(`${asyncPrefix}:async-hello-node:`)),
      `no key of the queue async-hello-node in the queue Redis: ${queued.join(' ')}`,
    )
    assert.deepEqual(await keys(REDIS_URL, `${asyncPrefix}:*`), [])
    assert.notDeepEqual(await keys(REDIS_URL, `${keyPrefix}:*`), [])

    const exited = new Promise<number | null>((r) => up!.child.once('exit', (code) => r(code)))
    up.child.kill('SIGINT')
    assert.equal(await exited, 0, up.output().slice(-2000))
  })

  test('initless up stops at once, with the fix, when the queue Redis does not answer', async (t) => {
    if (!requireServices(t)) return
    const nobody = await freePort()
    const res = await exec(process.execPath, [CLI, 'up'], {
      env: { ...env, INITLESS_ASYNC_REDIS_PORT: String(nobody) },
      cwd: ROOT,
      timeout: 60_000,
    }).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    )
    assert.equal(res.code, 1, res.stderr)
    assert.match(
      res.stderr,
      new RegExp(
        `^initless: the queue Redis at redis://127\\.0\\.0\\.1:${nobody} .* does not answer \\(.*\\): run \`bash scripts/provision\\.sh\``,
        'm',
      ),
    )
  })

  test('initless doctor: the provisioned queue Redis passes, one on everysec passes with advice', async (t) => {
    if (!requireServices(t)) return
    assert.ok(queue, 'the first test started the queue Redis')
    everysec = await startQueueRedis(everysecDir, ['--appendfsync', 'everysec'])
    const doctor = async (extra: Record<string, string>): Promise<Check> => {
      const { stdout } = await exec(process.execPath, [CLI, '--json', 'doctor', '--quick'], {
        env: { ...env, ...extra },
        cwd: ROOT,
        timeout: 180_000,
      }).catch((e: { stdout: string }) => e)
      const check = (JSON.parse(stdout) as Check[]).find((c) => c.name === 'queue redis')
      assert.ok(check, stdout)
      return check
    }
    const good = await doctor({ INITLESS_ASYNC_REDIS_PORT: String(queue.port) })
    assert.deepEqual([good.ok, good.warn], [true, undefined])
    assert.match(good.detail, /appendonly yes, appendfsync always \(a 202 is on disk\)$/)

    const bad = await doctor({ INITLESS_ASYNC_REDIS_URL: everysec.url })
    assert.equal(bad.ok, true)
    assert.match(
      bad.detail,
      new RegExp(
        `^queues on ${everysec.url} \\(INITLESS_ASYNC_REDIS_URL\\): appendonly yes, appendfsync everysec`,
      ),
    )
    assert.match(bad.warn ?? '', /config set appendfsync always/)
  })
})
