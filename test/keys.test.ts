/**
 * Invocation keys and rate limits on real gateways (startGateway on real Redis and BullMQ, a
 * stand-in executor serving real HTTP instances), managed with the real CLI (dist/cli/main.js):
 * 401 without, with a wrong and with a revoked key, 200 with a valid one that the function never
 * sees, no key in any log line of the gateways or the CLI, a revocation refused by two gateways
 * within a second (by the event alone: the periodic re-read is set to a minute), 429 with
 * Retry-After under a burst with one client limited and another not, the GCRA script's arithmetic
 * on Redis, bad admin input and CLI usage errors.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { Writable } from 'node:stream'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { builtEntry } from '../cli/launcher.ts'
import { createRedisRateLimiter } from '../gateway/access/rate-limiter.ts'
import type { Problem } from '../gateway/problem.ts'
import { rawExchange, testManifest, type Echo } from '../gateway/test-support.ts'
import { API_KEY_RE, createRedisApiKeyStore } from '../shared/api-keys.ts'
import { createLogger } from '../shared/logger.ts'
import { createRedis, deleteKeys } from '../shared/redis.ts'
import {
  cleanUp,
  isolation,
  REDIS_URL,
  redisSkipReason,
  startFakeExecutor,
  startGateway,
  type FakeExecutor,
  type RunningGateway,
} from './gateway-harness.ts'

const skip = await redisSkipReason()
const execFileAsync = promisify(execFile)
const TOKEN = 'keys-test-admin-token-0123456789'

/** Every line a gateway logs, at debug level, through the production logger (its redaction). */
function capturedLogger(lines: string[]) {
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString())
      done()
    },
  })
  return createLogger({ level: 'debug', name: 'gateway', destination })
}

interface CliResult {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

describe('invocation keys and rate limits', { skip }, () => {
  const iso = isolation()
  const redis = createRedis(REDIS_URL, { name: 'test-keys-cleanup' })
  const manifests = [
    testManifest('locked', { auth: 'key' }),
    testManifest('open'),
    testManifest('limited', { auth: 'key', rateLimit: { perClient: 2, burst: 3 } }),
    testManifest('by-address', { rateLimit: { perClient: 1, burst: 2 } }),
  ]
  const logs: string[] = []
  const cliOutput: string[] = []
  let executor: FakeExecutor
  let a: RunningGateway
  let b: RunningGateway
  let port = 0

  const cli = async (args: string[], env: Record<string, string> = {}): Promise<CliResult> => {
    const res = await execFileAsync(process.execPath, [builtEntry('cli'), ...args], {
      env: { ...process.env, INITLESS_GATEWAY_URL: a.url, INITLESS_ADMIN_TOKEN: TOKEN, ...env },
      timeout: 30_000,
    }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (err: { code?: number; stdout?: string; stderr?: string }) => ({
        code: typeof err.code === 'number' ? err.code : -1,
        stdout: err.stdout ?? '',
        stderr: err.stderr ?? '',
      }),
    )
    cliOutput.push(res.stderr)
    return res
  }
  const createKey = async (fn: string, name?: string) => {
    const r = await cli(['keys', 'create', fn, ...(name ? ['--name', name] : [])])
    assert.equal(r.code, 0, r.stderr)
    const key = r.stdout.trim()
    assert.match(key, API_KEY_RE)
    return { key, id: key.slice(4, 16) }
  }
  const call = (url: string, fn: string, headers: Record<string, string> = {}) =>
    fetch(`${url}/fn/${fn}/`, { headers, signal: AbortSignal.timeout(10_000) })
  const problemOf = async (res: Response) => {
    assert.equal(res.headers.get('content-type'), 'application/problem+json')
    return (await res.json()) as Problem
  }

  before(async () => {
    executor = startFakeExecutor(iso)
    // A minute between full re-reads: a revocation must reach the gateways by its event.
    const opts = {
      refreshIntervalMs: 60_000,
      env: { INITLESS_ADMIN_TOKEN: TOKEN },
      logger: capturedLogger(logs),
    }
    a = await startGateway(iso, manifests, opts)
    b = await startGateway(iso, manifests, opts)
    port = Number(new URL(a.url).port)
  })
  after(async () => {
    await a?.close()
    await b?.close()
    await executor?.close()
    await cleanUp(redis, iso)
    redis.disconnect()
  })

  test('401 without a key and with a wrong one; 200 with a valid one, which the function never sees', async () => {
    const { key } = await createKey('locked', 'integration')
    const none = await call(a.url, 'locked')
    assert.equal(none.status, 401)
    assert.equal((await problemOf(none)).code, 'ERR_KEY_REQUIRED')
    assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer realm="initless"/)
    const wrong = await call(a.url, 'locked', { 'x-api-key': `${key.slice(0, -4)}AAAA` })
    assert.equal(wrong.status, 401)
    assert.equal((await problemOf(wrong)).code, 'ERR_KEY_INVALID')

    // The direct lane (plain target), the hono lane (a Prefer header routes it there), both headers.
    const variants: Record<string, string>[] = [
      { 'x-api-key': key },
      { authorization: `Bearer ${key}` },
      { 'x-api-key': key, prefer: 'return=minimal' },
      { authorization: `Bearer ${key}`, prefer: 'return=minimal' },
    ]
    for (const headers of variants) {
      for (const url of [a.url, b.url]) {
        const res = await call(url, 'locked', headers)
        assert.equal(res.status, 200, JSON.stringify(headers))
        const text = await res.text()
        assert.ok(!text.includes(key.slice(17)), `the function saw the key: ${text}`)
        const echo = JSON.parse(text) as Echo
        assert.equal(echo.headers['x-api-key'], undefined)
        assert.equal(echo.headers.authorization, undefined)
      }
    }
    const open = await call(a.url, 'open', { 'x-api-key': 'the-functions-own' })
    assert.equal(((await open.json()) as Echo).headers['x-api-key'], 'the-functions-own')
  })

  test('a revoked key is refused by both gateways within 1 s', async (t) => {
    const { key, id } = await createKey('locked')
    for (const url of [a.url, b.url])
      assert.equal((await call(url, 'locked', { 'x-api-key': key })).status, 200)
    // Timed from the admin call that revokes it (the CLI's own start-up is no part of it).
    const revokedAt = performance.now()
    const revoke = await fetch(`${a.url}/admin/functions/locked/keys/${id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${TOKEN}` },
    })
    assert.equal(revoke.status, 200)
    const refusedAfter = await Promise.all(
      [a.url, b.url].map(async (url) => {
        for (;;) {
          const res = await call(url, 'locked', { 'x-api-key': key })
          await res.arrayBuffer()
          if (res.status === 401) return performance.now() - revokedAt
          if (performance.now() - revokedAt > 5000) return Infinity
          await new Promise((resolve) => setTimeout(resolve, 10))
        }
      }),
    )
    t.diagnostic(
      `refused after ${refusedAfter.map((ms) => ms.toFixed(0)).join(' and ')} ms from the revoke call`,
    )
    for (const ms of refusedAfter) assert.ok(ms < 1000, `refused after ${ms} ms`)
    // The same through the CLI.
    const other = await createKey('locked')
    const r = await cli(['keys', 'revoke', 'locked', other.id])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, new RegExp(`key ${other.id} of locked revoked`))
    assert.equal((await call(b.url, 'locked', { 'x-api-key': other.key })).status, 401)
    const list = await cli(['--json', 'keys', 'list', 'locked'])
    const listed = JSON.parse(list.stdout) as { keys: { id: string }[] }
    assert.ok(!listed.keys.some((k) => k.id === id || k.id === other.id), 'revoked keys are not listed')
    assert.ok(!list.stdout.includes('hash'), list.stdout)
  })

  test("a deleted function's keys are all revoked (revokeAll, as the delete route calls it)", async () => {
    const one = await createKey('open')
    const two = await createKey('open')
    const store = createRedisApiKeyStore({
      redis,
      logger: createLogger({ level: 'silent' }),
      prefix: iso.prefix,
    })
    assert.equal((await store.list('open')).length, 2)
    assert.equal(await store.revokeAll('open'), 2)
    assert.equal(await store.revokeAll('open'), 0)
    assert.deepEqual(await store.list('open'), [])
    assert.ok(!(await store.functions()).includes('open'))
    const listed = await cli(['--json', 'keys', 'list', 'open'])
    assert.deepEqual((JSON.parse(listed.stdout) as { keys: unknown[] }).keys, [])
    assert.notEqual(one.id, two.id)
  })

  test('a burst: 429 with Retry-After for the limited client, the other key is not limited', async () => {
    const first = await createKey('limited')
    const second = await createKey('limited')
    const burst = await Promise.all(
      Array.from({ length: 8 }, () => call(a.url, 'limited', { 'x-api-key': first.key })),
    )
    const statuses = burst.map((r) => r.status).sort()
    assert.deepEqual(statuses, [200, 200, 200, 429, 429, 429, 429, 429], 'burst 3, then refused')
    const refused = burst.find((r) => r.status === 429)
    assert.ok(refused)
    assert.equal((await problemOf(refused)).code, 'ERR_RATE_LIMITED')
    assert.match(refused.headers.get('retry-after') ?? '', /^[1-9]\d*$/)
    await Promise.all(burst.filter((r) => r !== refused).map((r) => r.arrayBuffer()))
    // The same key on the other gateway: the bucket is shared through Redis.
    assert.equal((await call(b.url, 'limited', { 'x-api-key': first.key })).status, 429)
    const other = await call(b.url, 'limited', { 'x-api-key': second.key })
    assert.equal(other.status, 200, 'another client has a bucket of its own')
    await other.arrayBuffer()
  })

  test('without auth the client is the source address: 127.0.0.2 limited, 127.0.0.3 not', async () => {
    const get = (from: string) =>
      rawExchange(port, `GET /fn/by-address/ HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n`, {
        localAddress: from,
      })
    const statuses = []
    for (let i = 0; i < 3; i++) statuses.push((await get('127.0.0.2')).status)
    assert.deepEqual(statuses, [200, 200, 429])
    const refused = await get('127.0.0.2')
    assert.equal(refused.status, 429)
    assert.equal(refused.headers['retry-after'], '1')
    assert.equal((await get('127.0.0.3')).status, 200)
  })

  test('the GCRA script on Redis: burst, Retry-After, refill at the rate', async () => {
    const prefix = `${iso.prefix}-gcra`
    const limiter = createRedisRateLimiter({ redis, prefix })
    try {
      // Two a second: the three calls fit well inside one interval even on a busy machine.
      const limits = { perClient: { rate: 2, burst: 2 } }
      const first = [
        await limiter.take('f', 'c', limits),
        await limiter.take('f', 'c', limits),
        await limiter.take('f', 'c', limits),
      ]
      assert.deepEqual(
        first.map((d) => d.isAllowed),
        [true, true, false],
      )
      const wait = first[2]?.retryAfterMs ?? 0
      assert.ok(wait > 0 && wait <= 500, `retry after ${wait} ms (one interval at most)`)
      await new Promise((r) => setTimeout(r, wait + 5))
      assert.equal((await limiter.take('f', 'c', limits)).isAllowed, true, 'refilled after one interval')
      assert.equal((await limiter.take('f', 'c', limits)).isAllowed, false)
      // A refusal by the function's bucket takes nothing from the client's.
      const both = { perFunction: { rate: 1, burst: 1 }, perClient: { rate: 1, burst: 5 } }
      assert.equal((await limiter.take('g', 'x', both)).isAllowed, true)
      assert.equal((await limiter.take('g', 'x', both)).isAllowed, false)
      const ttl = await redis.pttl(`${prefix}:ratelimit:g:client:x`)
      assert.ok(ttl > 0 && ttl <= 1001, `a bucket expires once full again (pttl ${ttl})`)
    } finally {
      await deleteKeys(redis, [`${prefix}:*`])
    }
  })

  test('bad admin input: 4xx problem+json', async () => {
    const cases: [string, string, string | undefined, number, string][] = [
      ['POST', '/admin/functions/nope/keys', undefined, 404, 'ERR_FUNCTION_NOT_FOUND'],
      ['POST', '/admin/functions/locked/keys', '{"name":', 400, 'ERR_GATEWAY_BAD_REQUEST'],
      ['POST', '/admin/functions/locked/keys', '{"name":"ok","extra":1}', 400, 'ERR_GATEWAY_BAD_REQUEST'],
      ['DELETE', '/admin/functions/locked/keys/not-an-id', undefined, 400, 'ERR_GATEWAY_BAD_REQUEST'],
      ['DELETE', '/admin/functions/locked/keys/aaaaaaaaaaaa', undefined, 404, 'ERR_KEY_NOT_FOUND'],
      ['GET', '/admin/functions/Bad_Name/keys', undefined, 404, 'ERR_FUNCTION_NAME_INVALID'],
    ]
    for (const [method, path, body, status, code] of cases) {
      const res = await fetch(`${a.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
        ...(body === undefined ? {} : { body }),
      })
      assert.equal(res.status, status, `${method} ${path}`)
      assert.equal((await problemOf(res)).code, code, `${method} ${path}`)
    }
    const noToken = await fetch(`${a.url}/admin/functions/locked/keys`, { method: 'POST' })
    assert.equal(noToken.status, 401)
  })

  test('CLI usage errors exit 2 with a message; an unknown function exits 1 naming it', async () => {
    const usage: [string[], RegExp][] = [
      [['keys', 'create'], /missing required argument 'fn'/],
      [['keys', 'create', 'Bad_Name'], /expected a function name/],
      [['keys', 'revoke', 'locked'], /missing required argument 'id'/],
      [['keys', 'revoke', 'locked', 'xyz'], /expected a key id/],
      [['keys', 'create', 'locked', '--name', 'a\tb'], /printable ASCII/],
      [['keys', 'frobnicate'], /unknown command|too many arguments/],
    ]
    for (const [args, message] of usage) {
      const r = await cli(args)
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`)
      assert.match(r.stderr, message)
    }
    const unknown = await cli(['keys', 'create', 'nope'])
    assert.equal(unknown.code, 1)
    assert.match(unknown.stderr, /no function named nope/)
    const noToken = await cli(['keys', 'list', 'locked'], { INITLESS_ADMIN_TOKEN: '' })
    assert.equal(noToken.code, 2)
    assert.match(noToken.stderr, /INITLESS_ADMIN_TOKEN is not set/)
  })

  test('no key appears in any log line of the gateways or on the CLI stderr', async () => {
    const { key } = await createKey('locked', 'log-check')
    // Requests that log at debug and info (proxied, refused), both headers.
    await (await call(a.url, 'locked', { 'x-api-key': key })).arrayBuffer()
    await (await call(b.url, 'locked', { authorization: `Bearer ${key}` })).arrayBuffer()
    await (await call(a.url, 'open', { authorization: `Bearer ${key}` })).arrayBuffer()
    await (await call(a.url, 'locked', { 'x-api-key': `${key}x` })).arrayBuffer()
    const secret = key.slice(17)
    assert.ok(logs.length > 10, `the gateways logged (${logs.length} lines)`)
    assert.ok(
      logs.some((l) => l.includes('"key created"')),
      'key creation is logged (by id)',
    )
    for (const line of [...logs, ...cliOutput]) assert.ok(!line.includes(secret), `a key in: ${line}`)
  })
})
