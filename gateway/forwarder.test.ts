import assert from 'node:assert/strict'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { describe, test } from 'node:test'
import { isInitlessError } from '../shared/errors.ts'
import {
  clientHeaders,
  createBodyLimit,
  forwardedHeaders,
  hasBody,
  needsBodyLimit,
  upstreamError,
  upstreamHeaders,
  withoutHopByHop,
  type ForwardedInput,
} from './forwarder.ts'
import { serverTiming } from './server-timing.ts'

describe('hop-by-hop headers', () => {
  test('dropped, with the headers Connection names', () => {
    const out = withoutHopByHop({
      connection: 'keep-alive, X-Secret-Hop',
      'keep-alive': 'timeout=5',
      'x-secret-hop': '1',
      'transfer-encoding': 'chunked',
      te: 'trailers',
      upgrade: 'h2c',
      'proxy-authorization': 'Basic x',
      'content-type': 'text/plain',
      authorization: 'Bearer fn-token',
    })
    assert.deepEqual(out, { 'content-type': 'text/plain', authorization: 'Bearer fn-token' })
  })

  test('upstream request: incoming X-Forwarded-* replaced by ours, request id set', () => {
    const out = upstreamHeaders(
      { host: 'gw', 'x-forwarded-for': '6.6.6.6', 'x-forwarded-host': 'evil', connection: 'close' },
      { 'x-forwarded-for': '1.2.3.4', 'x-request-id': 'r1' },
    )
    assert.deepEqual(out, { host: 'gw', 'x-forwarded-for': '1.2.3.4', 'x-request-id': 'r1' })
  })

  test('client response: Server-Timing appended to the function’s own', () => {
    const out = clientHeaders(
      { 'server-timing': 'app;dur=5', connection: 'keep-alive', 'set-cookie': ['a=1', 'b=2'] },
      { 'server-timing': 'warm, upstream;dur=7', 'x-request-id': 'r1' },
    )
    assert.deepEqual(out, {
      'server-timing': 'app;dur=5, warm, upstream;dur=7',
      'set-cookie': ['a=1', 'b=2'],
      'x-request-id': 'r1',
    })
  })
})

describe('forwardedHeaders', () => {
  const base: ForwardedInput = {
    host: 'gw:8080',
    remoteAddress: '10.0.0.9',
    protocol: 'http',
    trustProxy: false,
  }
  const cases: { name: string; input: ForwardedInput; want: Record<string, string> }[] = [
    {
      name: 'direct client',
      input: base,
      want: { 'x-forwarded-for': '10.0.0.9', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'gw:8080' },
    },
    {
      name: 'untrusted X-Forwarded-* are replaced',
      input: { ...base, forwardedFor: '6.6.6.6', forwardedProto: 'https', forwardedHost: 'evil' },
      want: { 'x-forwarded-for': '10.0.0.9', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'gw:8080' },
    },
    {
      name: 'trusted proxy: appended and kept',
      input: {
        ...base,
        trustProxy: true,
        forwardedFor: '1.1.1.1, 2.2.2.2',
        forwardedProto: 'https',
        forwardedHost: 'api.example',
      },
      want: {
        'x-forwarded-for': '1.1.1.1, 2.2.2.2, 10.0.0.9',
        'x-forwarded-proto': 'https',
        'x-forwarded-host': 'api.example',
      },
    },
    {
      name: 'no peer address (app.request)',
      input: { protocol: 'https', trustProxy: false },
      want: { 'x-forwarded-proto': 'https' },
    },
  ]
  for (const c of cases) test(c.name, () => assert.deepEqual(forwardedHeaders(c.input), c.want))
})

describe('hasBody', () => {
  const cases: [string, Record<string, string>, boolean][] = [
    ['GET', { 'content-length': '10' }, false],
    ['HEAD', {}, false],
    ['POST', {}, false],
    ['POST', { 'content-length': '0' }, false],
    ['POST', { 'content-length': '3' }, true],
    ['PUT', { 'transfer-encoding': 'chunked' }, true],
  ]
  for (const [method, headers, want] of cases) {
    test(`${method} ${JSON.stringify(headers)} -> ${want}`, () => {
      assert.equal(hasBody(method, headers), want)
      assert.equal(hasBody(method, new Headers(headers)), want)
    })
  }
})

describe('upstreamError', () => {
  const target = { host: '127.0.0.1', port: 1 }
  const err = (code: string) => Object.assign(new Error(code), { code })
  test('refused: dead instance, retryable', () => {
    const e = upstreamError(err('ECONNREFUSED'), target)
    assert.ok(isInitlessError(e, 'ERR_GATEWAY_UPSTREAM_FAILED'))
    assert.equal(e.details.isRefused, true)
    assert.equal(e.details.isRetryable, true)
  })
  test('reset on a reused keep-alive socket: retryable, not dead', () => {
    const e = upstreamError(err('ECONNRESET'), target, { isReusedSocket: true })
    assert.deepEqual([e.details.isRefused, e.details.isRetryable], [false, true])
  })
  test('reset on a fresh socket: not retryable', () => {
    assert.equal(upstreamError(err('ECONNRESET'), target).details.isRetryable, false)
  })
  test('timeout: 504', () => {
    assert.equal(upstreamError(err('x'), target, { timedOutAfterMs: 50 }).status, 504)
  })
})

test('body limit passes up to the limit and fails past it', async () => {
  await pipeline(
    Readable.from([Buffer.alloc(5), Buffer.alloc(5)]),
    createBodyLimit(10),
    async function* (src) {
      for await (const _ of src) yield _
    },
  )
  await assert.rejects(
    pipeline(Readable.from([Buffer.alloc(6), Buffer.alloc(6)]), createBodyLimit(10), async function* (src) {
      for await (const _ of src) yield _
    }),
    (e) => isInitlessError(e, 'ERR_GATEWAY_BODY_TOO_LARGE'),
  )
})

describe('serverTiming', () => {
  test('warm', () =>
    assert.equal(serverTiming({ isCold: false, waitedMs: 0.2, upstreamMs: 1.234 }), 'warm, upstream;dur=1.2'))
  test('warm but queued behind busy instances', () =>
    assert.equal(
      serverTiming({ isCold: false, waitedMs: 12, upstreamMs: 3 }),
      'warm, wait;dur=12, upstream;dur=3',
    ))
  test('cold with phases', () =>
    assert.equal(
      serverTiming({
        isCold: true,
        waitedMs: 40.04,
        phases: { queueMs: 1, sandboxMs: 2, restoreMs: 30, readyMs: 5 },
        upstreamMs: 2,
      }),
      'cold, wait;dur=40, queue;dur=1, sandbox;dur=2, restore;dur=30, ready;dur=5, upstream;dur=2',
    ))
})

describe('needsBodyLimit', () => {
  test('only a chunked body is counted; a Content-Length is checked up front', () => {
    assert.equal(needsBodyLimit({}, 10), false)
    assert.equal(needsBodyLimit({ 'content-length': '10' }, 10), false)
    assert.equal(needsBodyLimit({ 'transfer-encoding': 'chunked' }, 10), true)
    assert.throws(
      () => needsBodyLimit({ 'content-length': '11' }, 10),
      (err: unknown) => isInitlessError(err) && err.code === 'ERR_GATEWAY_BODY_TOO_LARGE',
    )
  })
})
