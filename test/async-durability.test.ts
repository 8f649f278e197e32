/**
 * What a 202 promises, against the real stack: `kill -9` of the gateway running the invocations
 * (the worker role) in the middle of a backlog, and `kill -9` of the queue's Redis while
 * invocations are being accepted, then a restart from its AOF. Every invocation answered 202 ends
 * succeeded or dead; none is lost; an invocation run twice is one the dead gateway was running,
 * and its attempt log shows the interrupted attempt. The queue's Redis is this test's own
 * redis-server on a free port, run from the configuration scripts/provision.sh gives the queue
 * Redis (`appendfsync always`); the shared one on 6379 is never touched.
 */
import assert from 'node:assert/strict'
import { randomBytes, randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { probeQueueRedis } from '../cli/queue-redis-probe.ts'
import { asyncFunctionsDir, eachLimited, isFinished, waitInvocation, type View } from './support/async.ts'
import { startE2eStack, startProcess, type E2eStack, type ManagedProcess } from './support/e2e.ts'
import { requireServices } from './support/integration.ts'
import { startQueueRedis, type TestRedis } from './support/queue-redis.ts'

const CONCURRENCY = 8

describe('asynchronous invocations survive kill -9', () => {
  let stack: E2eStack | undefined
  let gateway2: ManagedProcess | undefined
  let redis: TestRedis | undefined
  let redisDir = ''
  let functionsDir = ''
  const stateDir = `/var/lib/initless-test/async-dur-${randomBytes(4).toString('hex')}`

  before(async () => {
    functionsDir = await asyncFunctionsDir({
      'async-rec': (m) => m.replace('  concurrency: 16', `  concurrency: ${CONCURRENCY}`),
    })
    redisDir = await mkdtemp(join(tmpdir(), 'initless-async-redis-'))
  })
  after(async () => {
    await gateway2?.stop()
    await stack?.stop()
    await redis?.kill()
    await rm(stateDir, { recursive: true, force: true })
    for (const dir of [functionsDir, redisDir]) if (dir) await rm(dir, { recursive: true, force: true })
  })

  const served = async (): Promise<Record<string, number>> => {
    const res = await stack!.request('GET', '/fn/async-rec/served')
    return res.status === 200 ? (JSON.parse(res.text) as Record<string, number>) : {}
  }
  const waitServed = async (ids: readonly string[], timeoutMs: number) => {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const s = await served().catch((): Record<string, number> => ({}))
      if (ids.every((id) => s[id] !== undefined)) return s
      if (Date.now() > deadline)
        throw new Error(`${ids.filter((id) => s[id] === undefined).length} invocations never served`)
      await new Promise((r) => setTimeout(r, 250))
    }
  }

  test('the stack starts with its own queue Redis', async (t) => {
    if (!requireServices(t)) return
    redis = await startQueueRedis(redisDir)
    // What makes the 202 durable beyond a process crash: provisioning's configuration holds it.
    const state = await probeQueueRedis(redis.url)
    assert.deepEqual([state.appendonly, state.appendfsync], ['yes', 'always'])
    stack = await startE2eStack({
      env: {
        INITLESS_FUNCTIONS_DIR: functionsDir,
        INITLESS_STATE_DIR: stateDir,
        INITLESS_ASYNC_REDIS_URL: redis.url,
        INITLESS_ASYNC_LOCK: '3s',
        INITLESS_ASYNC_STALLED_INTERVAL: '1s',
        INITLESS_ASYNC_MAX_STALLED: '5',
      },
      prepareTimeoutMs: 300_000,
    })
  })

  test('kill -9 of the gateway running 200 queued invocations: all run after a restart', async (t) => {
    if (!stack) return t.skip('no stack')
    const s = stack
    const ids = await eachLimited(
      Array.from({ length: 200 }, (_, i) => i),
      20,
      async () => {
        const res = await s.request('POST', '/async-function/async-rec/record?sleep=0.1')
        assert.equal(res.status, 202, res.text)
        return (JSON.parse(res.text) as { id: string }).id
      },
    )
    // Kill it in the middle: some served, most still queued, CONCURRENCY running.
    let servedBefore = 0
    while (servedBefore < 40) {
      servedBefore = Object.keys(await served()).filter((id) => ids.includes(id)).length
      await new Promise((r) => setTimeout(r, 50))
    }
    s.gateway.child.kill('SIGKILL')
    await s.gateway.exited()
    t.diagnostic(`gateway killed after ${servedBefore} of 200 served`)

    gateway2 = startProcess('gateway-2', 'gateway', { env: s.env })
    await gateway2.waitForLog((r) => r.msg === 'gateway listening', 30_000)
    const after = await waitServed(ids, 120_000)
    const views = await eachLimited(ids, 20, (id) => waitInvocation(s, id, isFinished, 60_000))
    assert.deepEqual(
      views.filter((v) => v.state !== 'succeeded').map((v) => `${v.id} ${v.state}`),
      [],
    )
    // Run twice only if the dead gateway was running it: at most CONCURRENCY, each with the
    // interrupted attempt in its log.
    const twice = ids.filter((id) => (after[id] ?? 0) > 1)
    t.diagnostic(`${twice.length} invocations ran twice`)
    assert.ok(twice.length <= CONCURRENCY, `${twice.length} ran twice`)
    for (const id of twice) {
      const v = views.find((x) => x.id === id)!
      assert.ok(v.attempts.length >= 2, `${id}: ${JSON.stringify(v.attempts)}`)
    }
    assert.deepEqual(
      ids.filter((id) => (after[id] ?? 0) < 1),
      [],
    )
  })

  test('kill -9 of the queue Redis while 200 are accepted: every 202 ends succeeded or dead', async (t) => {
    if (!stack) return t.skip('no stack')
    const s = stack
    let acceptedCount = 0
    let refusedDuringOutage = 0
    const killed = (async () => {
      while (acceptedCount < 60) await new Promise((r) => setTimeout(r, 10))
      await redis!.kill()
      await new Promise((r) => setTimeout(r, 1500))
      await redis!.restart()
    })()
    const ids = await eachLimited(
      Array.from({ length: 200 }, () => randomUUID()),
      10,
      async (key) => {
        // A client that got no 202 sends again with the same Idempotency-Key.
        for (;;) {
          const res = await s
            .request('POST', '/async-function/async-rec/record', {
              headers: { 'idempotency-key': key },
              body: key,
            })
            .catch(() => undefined)
          if (res?.status === 202) {
            acceptedCount++
            return (JSON.parse(res.text) as { id: string }).id
          }
          refusedDuringOutage++
          if (res) assert.equal(res.status, 503, res.text)
          await new Promise((r) => setTimeout(r, 200))
        }
      },
    )
    await killed
    t.diagnostic(`${refusedDuringOutage} accept attempts refused during the outage`)
    assert.ok(refusedDuringOutage > 0, 'Redis was down while invocations were being accepted')
    assert.equal(new Set(ids).size, 200)
    const views: View[] = await eachLimited(ids, 20, (id) => waitInvocation(s, id, isFinished, 120_000))
    assert.deepEqual(
      views.filter((v) => v.state !== 'succeeded' && v.state !== 'dead').map((v) => v.id),
      [],
    )
    const after = await served()
    assert.deepEqual(
      views.filter((v) => v.state === 'succeeded' && !(after[v.id]! >= 1)).map((v) => v.id),
      [],
      'every succeeded invocation was served',
    )
    t.diagnostic(`${views.filter((v) => v.state === 'dead').length} dead`)
  })
})
