/**
 * Asynchronous invocations against the real stack (executor + gateway processes, real restores):
 * a backlog of 1,000 drained from zero instances, each served exactly once, while synchronous
 * requests to another function keep succeeding; retries with backoff; dead letters and redrive;
 * final 4xx; idempotency keys; callbacks (delivered, retried while the target is down, refused for
 * a disallowed address); the gateway's refusals (404, 413, 400, 422, 503).
 */
import assert from 'node:assert/strict'
import { randomBytes, randomUUID } from 'node:crypto'
import { execFile } from 'node:child_process'
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, describe, test } from 'node:test'
import {
  asyncFunctionsDir,
  eachLimited,
  isFinished,
  startCallbackReceiver,
  waitInvocation,
  type View,
} from './support/async.ts'
import { freePort, ROOT, startE2eStack, type E2eStack } from './support/e2e.ts'
import { requireServices } from './support/integration.ts'

const BACKLOG = 1000
const exec = promisify(execFile)

describe('asynchronous invocations', () => {
  let stack: E2eStack | undefined
  let functionsDir = ''
  const stateDir = `/var/lib/initless-test/async-${randomBytes(4).toString('hex')}`
  let isReady = false

  before(async () => {
    functionsDir = await asyncFunctionsDir({
      'async-rec': (m) => m,
      'sync-rec': (m) => m,
      // One attempt at a time and two waiting at most: the third queued invocation is refused.
      'async-full': (m) => m.replace('  concurrency: 16', '  concurrency: 1\n  queueLimit: 2'),
    })
  })
  after(async () => {
    await stack?.stop()
    await rm(stateDir, { recursive: true, force: true })
    if (functionsDir) await rm(functionsDir, { recursive: true, force: true })
  })

  const accept = async (path: string, headers: Record<string, string> = {}, body?: string) => {
    const res = await stack!.request('POST', path, { headers, ...(body === undefined ? {} : { body }) })
    return {
      res,
      json: JSON.parse(res.text || '{}') as { id?: string; code?: string; isDuplicate?: boolean },
    }
  }

  test('the stack starts with the async fixtures', async (t) => {
    if (!requireServices(t)) return
    stack = await startE2eStack({
      env: {
        INITLESS_FUNCTIONS_DIR: functionsDir,
        INITLESS_STATE_DIR: stateDir,
        INITLESS_CALLBACK_ALLOW: '127.0.0.1/32',
        INITLESS_CALLBACK_BACKOFF: '300ms',
      },
      prepareTimeoutMs: 300_000,
    })
    isReady = true
  })

  test(`${BACKLOG} invocations of a scaled-to-zero function: all accepted, each served exactly once`, async (t) => {
    if (!isReady) return t.skip('no stack')
    const s = stack!
    assert.deepEqual(await s.instances('async-rec'), [], 'starts from zero instances')
    // Synchronous traffic to another function all along.
    let syncFailures = 0
    let syncOk = 0
    let isDraining = true
    const syncLoop = (async () => {
      while (isDraining) {
        const res = await s.request('GET', '/fn/sync-rec/record').catch(() => undefined)
        if (res?.status === 200) syncOk++
        else syncFailures++
        await new Promise((r) => setTimeout(r, 20))
      }
    })()

    const started = Date.now()
    const accepted = await eachLimited(
      Array.from({ length: BACKLOG }, (_, i) => i),
      50,
      async (i) => {
        const { res, json } = await accept(
          '/async-function/async-rec/record',
          { 'content-type': 'text/plain' },
          `n=${i}`,
        )
        assert.equal(res.status, 202, res.text)
        assert.equal(res.headers['x-invocation-id'], json.id)
        assert.equal(res.headers.location, `/invocations/${json.id}`)
        return json.id!
      },
    )
    const acceptMs = Date.now() - started
    assert.equal(new Set(accepted).size, BACKLOG)

    // Drained when the function has served every id.
    let served: Record<string, number> = {}
    const deadline = Date.now() + 300_000
    while (Date.now() < deadline) {
      const res = await s.request('GET', '/fn/async-rec/served')
      if (res.status === 200) served = JSON.parse(res.text) as Record<string, number>
      if (accepted.every((id) => served[id] !== undefined)) break
      await new Promise((r) => setTimeout(r, 250))
    }
    const drainMs = Date.now() - started
    isDraining = false
    await syncLoop
    t.diagnostic(
      `accepted ${BACKLOG} in ${acceptMs} ms, drained in ${drainMs} ms; ${syncOk} sync requests meanwhile`,
    )

    assert.deepEqual(
      accepted.filter((id) => served[id] !== 1),
      [],
      'every invocation served exactly once',
    )
    const views = await eachLimited(accepted, 20, (id) => waitInvocation(s, id, isFinished, 30_000))
    assert.deepEqual(
      views
        .filter((v) => v.state !== 'succeeded' || v.attempts.length !== 1 || v.result?.status !== 200)
        .map((v) => v.id),
      [],
    )
    const first = views[0]!
    assert.equal(Buffer.from(first.result!.body, 'base64').toString().includes(`"id": "${first.id}"`), true)
    assert.equal(syncFailures, 0, 'synchronous requests to another function never failed')
    assert.ok(syncOk > 0)
    const metrics = (await s.request('GET', '/metrics')).text
    assert.match(metrics, /initless_async_attempts_total\{function="async-rec",outcome="succeeded"\} 1000/)
    assert.match(metrics, /initless_async_queue_depth\{function="async-rec"\} 0/)
  })

  test('a function failing twice succeeds on the third attempt, the backoff visible', async (t) => {
    if (!isReady) return t.skip('no stack')
    const { res, json } = await accept('/async-function/async-rec/flaky?fail=2')
    assert.equal(res.status, 202)
    const v = await waitInvocation(stack!, json.id!, isFinished)
    assert.equal(v.state, 'succeeded')
    assert.deepEqual(
      v.attempts.map((a) => [a.status, a.next]),
      [
        [503, 'retry'],
        [503, 'retry'],
        [200, 'succeeded'],
      ],
    )
    const [a1, a2, a3] = v.attempts
    assert.ok(a1!.sentAt! >= a1!.startedAt && a1!.endedAt! >= a1!.sentAt!, JSON.stringify(a1))
    // async.backoff 500ms doubling, jitter 0.5: waits in [250, 500] then [500, 1000] ms.
    assert.ok(a2!.startedAt - a1!.endedAt! >= 240, `first backoff ${a2!.startedAt - a1!.endedAt!} ms`)
    assert.ok(a3!.startedAt - a2!.endedAt! >= 490, `second backoff ${a3!.startedAt - a2!.endedAt!} ms`)
    assert.equal(Buffer.from(v.result!.body, 'base64').toString(), 'attempt 3 ok\n')
  })

  test('one that fails every attempt ends dead with each recorded; a redrive runs it again', async (t) => {
    if (!isReady) return t.skip('no stack')
    // Four attempts (retries 3) fail; the fifth and sixth run only after the redrive.
    const { json } = await accept('/async-function/async-rec/flaky?fail=5', { 'x-test': 'dead' }, 'keep me')
    const dead = await waitInvocation(stack!, json.id!, isFinished)
    assert.equal(dead.state, 'dead')
    assert.deepEqual(
      dead.attempts.map((a) => [a.status, a.next]),
      [
        [503, 'retry'],
        [503, 'retry'],
        [503, 'retry'],
        [503, 'dead'],
      ],
    )
    const listed = await stack!.admin<{ invocations: View[] }>('GET', '/invocations?fn=async-rec&state=dead')
    assert.ok(listed.body.invocations.some((i) => i.id === json.id))

    const redrive = await stack!.admin<{ redriven: string[] }>('POST', `/invocations/${json.id}/redrive`)
    assert.equal(redrive.status, 202)
    assert.deepEqual(redrive.body.redriven, [json.id])
    const again = await waitInvocation(stack!, json.id!, (v) => v.state === 'succeeded')
    assert.deepEqual(
      again.attempts.map((a) => a.status),
      [503, 503, 503, 503, 503, 200],
    )
    assert.equal(Buffer.from(again.result!.body, 'base64').toString(), 'attempt 6 ok\n')
  })

  test('a final 4xx is not retried', async (t) => {
    if (!isReady) return t.skip('no stack')
    const { json } = await accept('/async-function/async-rec/status?code=404')
    const v = await waitInvocation(stack!, json.id!, isFinished)
    assert.equal(v.state, 'failed')
    assert.equal(v.attempts.length, 1)
    assert.equal(v.result?.status, 404)
    const retried = await accept('/async-function/async-rec/status?code=429')
    const r = await waitInvocation(stack!, retried.json.id!, isFinished)
    assert.equal(r.state, 'dead')
    assert.equal(r.attempts.length, 4, '429 is retried')
  })

  test('Prefer: respond-async on /fn/ and an Idempotency-Key map to one invocation', async (t) => {
    if (!isReady) return t.skip('no stack')
    const key = randomUUID()
    const first = await accept(
      '/fn/async-rec/record',
      { prefer: 'respond-async', 'idempotency-key': key },
      'same',
    )
    assert.equal(first.res.status, 202)
    assert.equal(first.res.headers['preference-applied'], 'respond-async')
    const second = await accept(
      '/fn/async-rec/record',
      { prefer: 'respond-async', 'idempotency-key': key },
      'same',
    )
    assert.equal(second.res.status, 202)
    assert.equal(second.json.id, first.json.id)
    assert.equal(second.json.isDuplicate, true)
    const other = await accept(
      '/fn/async-rec/record',
      { prefer: 'respond-async', 'idempotency-key': key },
      'other',
    )
    assert.equal(other.res.status, 422)
    assert.equal(other.json.code, 'ERR_ASYNC_IDEMPOTENCY_CONFLICT')
    await waitInvocation(stack!, first.json.id!, (v) => v.state === 'succeeded')
    const served = JSON.parse((await stack!.request('GET', '/fn/async-rec/served')).text) as Record<
      string,
      number
    >
    assert.equal(served[first.json.id!], 1)
  })

  test('callbacks: delivered with the result, retried while the target is down, refused for a disallowed address', async (t) => {
    if (!isReady) return t.skip('no stack')
    const receiver = await startCallbackReceiver()
    t.after(() => receiver.close())
    const { json } = await accept('/async-function/async-rec/record', {
      'x-callback-url': `http://127.0.0.1:${receiver.port}/done`,
    })
    const v = await waitInvocation(stack!, json.id!, (x) => x.callback?.deliveredAt !== undefined)
    assert.equal(v.state, 'succeeded')
    const got = receiver.received.find((r) => r.body.id === json.id)
    assert.ok(got, 'callback received')
    assert.equal(got.headers['x-invocation-id'], json.id)
    assert.equal(got.body.state, 'succeeded')
    assert.equal(got.body.result?.status, 200)

    // Nothing listens on the port at first: the callback fails and is retried until it does.
    const port = await freePort()
    const down = await accept('/async-function/async-rec/record', {
      'x-callback-url': `http://127.0.0.1:${port}/`,
    })
    await waitInvocation(stack!, down.json.id!, (x) => x.state === 'succeeded')
    await new Promise((r) => setTimeout(r, 1000))
    const late = await startCallbackReceiver(port)
    t.after(() => late.close())
    await waitInvocation(stack!, down.json.id!, (x) => x.callback?.deliveredAt !== undefined, 30_000)
    assert.ok(late.received.some((r) => r.body.id === down.json.id))

    // A target that always answers 500: given up after INITLESS_CALLBACK_RETRIES (5), and counted.
    const failing = await startCallbackReceiver(0, 500)
    t.after(() => failing.close())
    const failed = await accept('/async-function/async-rec/record', {
      'x-callback-url': `http://127.0.0.1:${failing.port}/`,
    })
    const given = await waitInvocation(
      stack!,
      failed.json.id!,
      (x) => x.callback?.error !== undefined,
      30_000,
    )
    assert.equal(given.callback?.deliveredAt, undefined)
    assert.equal(failing.received.filter((r) => r.body.id === failed.json.id).length, 6)
    assert.match(
      (await stack!.request('GET', '/metrics')).text,
      /initless_async_callback_failures_total\{function="async-rec"\} 1/,
    )

    for (const url of [
      'http://127.0.0.2:9/',
      'http://169.254.169.254/latest',
      'http://10.213.0.5:8080/',
      'ftp://127.0.0.1/',
    ]) {
      const refused = await accept('/async-function/async-rec/record', { 'x-callback-url': url })
      assert.equal(refused.res.status, 400, url)
      assert.equal(refused.res.headers['content-type'], 'application/problem+json')
      assert.equal(refused.json.code, 'ERR_ASYNC_CALLBACK_REFUSED')
    }
  })

  test('the CLI: invoke --async, invocations --state dead, redrive, purge', async (t) => {
    if (!isReady) return t.skip('no stack')
    const env = {
      ...process.env,
      INITLESS_GATEWAY_URL: stack!.url,
      INITLESS_ADMIN_TOKEN: stack!.adminToken,
    }
    const cli = async (...args: string[]) => {
      const { stdout } = await exec(
        process.execPath,
        [join(ROOT, 'dist', 'cli', 'main.js'), '--json', ...args],
        {
          env,
          timeout: 60_000,
        },
      )
      return JSON.parse(stdout) as Record<string, unknown>
    }
    const invoked = (await cli('invoke', 'async-rec', '/fail', '-X', 'POST', '--async')) as { id: string }
    assert.match(invoked.id, /^async-rec\./)
    await waitInvocation(stack!, invoked.id, (v) => v.state === 'dead')
    const dead = (await cli('invocations', 'async-rec', '--state', 'dead')) as unknown as View[]
    assert.ok(dead.some((v) => v.id === invoked.id))
    const redriven = (await cli('redrive', invoked.id)) as { redriven: string[] }
    assert.deepEqual(redriven.redriven, [invoked.id])
    await waitInvocation(stack!, invoked.id, (v) => v.state === 'dead' && v.attempts.length === 8)
    const all = (await cli('redrive', 'async-rec')) as { redriven: string[] }
    assert.ok(all.redriven.includes(invoked.id), 'a function-wide redrive takes every dead one')
    await waitInvocation(stack!, invoked.id, (v) => v.state === 'dead' && v.attempts.length === 12)
    const purged = (await cli('purge', 'async-rec', '--state', 'dead')) as { purged: number }
    assert.ok(purged.purged >= 1)
    assert.equal((await stack!.request('GET', `/invocations/${invoked.id}`)).status, 404)
  })

  test('refusals: unknown function 404, body over async.maxBody 413, queue full 503 with Retry-After', async (t) => {
    if (!isReady) return t.skip('no stack')
    const unknown = await accept('/async-function/no-such-fn/')
    assert.equal(unknown.res.status, 404)
    assert.equal(unknown.json.code, 'ERR_FUNCTION_NOT_FOUND')
    const large = await accept('/async-function/async-rec/record', {}, 'x'.repeat(65 * 1024))
    assert.equal(large.res.status, 413)
    assert.equal(large.json.code, 'ERR_GATEWAY_BODY_TOO_LARGE')
    const missing = await stack!.request('GET', '/invocations/async-rec.00000000-0000-0000-0000-000000000000')
    assert.equal(missing.status, 404)

    // async-full runs one at a time (its first waits for a cold start, each takes 0.5 s) and lets
    // two wait: of ten sent one after the other, at most three are accepted.
    const answers = []
    for (let i = 0; i < 10; i++) answers.push(await accept('/async-function/async-full/record?sleep=0.5'))
    const full = answers.filter((a) => a.res.status === 503)
    assert.ok(full.length >= 7, answers.map((a) => a.res.status).join(' '))
    assert.equal(full[0]!.json.code, 'ERR_ASYNC_QUEUE_FULL')
    assert.ok(full[0]!.res.headers['retry-after'])
    for (const a of answers.filter((x) => x.res.status === 202))
      await waitInvocation(stack!, a.json.id!, (v) => v.state === 'succeeded')
  })

  test('the gateway stops cleanly with its workers running (SIGTERM, exit code 0)', async (t) => {
    if (!isReady) return t.skip('no stack')
    for (let i = 0; i < 3; i++) await accept('/async-function/async-rec/record?sleep=0.5')
    await new Promise((r) => setTimeout(r, 100))
    const exits = await stack!.stop()
    assert.equal(exits.gateway.code, 0, stack!.logs(40))
    assert.equal(exits.executor.code, 0, stack!.logs(40))
  })
})
