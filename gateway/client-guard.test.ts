import assert from 'node:assert/strict'
import { createServer, type Server } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { after, before, describe, test } from 'node:test'
import { createSilentLogger } from '../shared/logger.ts'
import { createClientGuard, guardedServerOptions, type ClientGuard } from './client-guard.ts'
import { PROBLEM_CONTENT_TYPE } from './problem.ts'
import { rawExchange, type RawAnswer } from './test-support.ts'

const OPTIONS = {
  headersTimeoutMs: 600,
  requestTimeoutMs: 1200,
  maxHeaderBytes: 16 * 1024,
  maxConnectionsPerClient: 3,
}

function problemOf(a: RawAnswer, status: number, code: string): { detail: string } {
  assert.equal(a.status, status, `${a.status} ${a.body}`)
  assert.equal(a.headers['content-type'], PROBLEM_CONTENT_TYPE)
  assert.equal(a.headers.connection, 'close')
  assert.equal(Number(a.headers['content-length']), Buffer.byteLength(a.body))
  const body = JSON.parse(a.body) as { code: string; status: number; detail: string }
  assert.equal(body.code, code)
  assert.equal(body.status, status)
  assert.equal(a.reset, false, 'closed gracefully, not reset')
  return body
}

describe('client guard', () => {
  let server: Server
  let guard: ClientGuard
  let port: number
  before(async () => {
    guard = createClientGuard(OPTIONS, createSilentLogger())
    server = createServer(
      guardedServerOptions(OPTIONS),
      guard.wrap((req, res) => {
        req.resume()
        req.on('end', () => res.end(`ok ${req.url}`))
      }),
    )
    guard.install(server)
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    port = (server.address() as AddressInfo).port
  })
  after(async () => {
    server.closeAllConnections()
    await new Promise((r) => server.close(r))
  })

  const ok = () => rawExchange(port, 'GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')

  test('a 200 KB header gets its 431 while the client is still sending', async () => {
    // Sent in 4 KB parts, read only once all is sent (as curl does): Node's own handling resets
    // such a connection, and the client never reads its 431.
    const big = Array.from({ length: 50 }, () => 'x'.repeat(4096))
    const a = await rawExchange(port, ['GET / HTTP/1.1\r\nHost: x\r\nX-Big: ', ...big, '\r\n\r\n'], {
      holdMs: 2,
      readAfterSend: true,
    })
    assert.match(problemOf(a, 431, 'ERR_GATEWAY_HEADERS_TOO_LARGE').detail, /exceed 16384 bytes/)
  })

  test('a malformed request line is a 400 naming the parse error', async () => {
    const a = await rawExchange(port, 'G@T / HTTP/1.1\r\nHost: x\r\n\r\n')
    assert.match(problemOf(a, 400, 'ERR_GATEWAY_BAD_REQUEST').detail, /^malformed HTTP request: /)
  })

  test('headers that never finish get a 408 after the headers timeout', async () => {
    const a = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ')
    problemOf(a, 408, 'ERR_GATEWAY_REQUEST_TIMEOUT')
  })

  test('a request without a Host header (HTTP/1.1 or 1.0), or with two, is a 400', async () => {
    const none = await rawExchange(port, 'GET / HTTP/1.1\r\n\r\n')
    assert.match(problemOf(none, 400, 'ERR_GATEWAY_BAD_REQUEST').detail, /needs a Host header/)
    const old = await rawExchange(port, 'GET / HTTP/1.0\r\n\r\n')
    assert.match(problemOf(old, 400, 'ERR_GATEWAY_BAD_REQUEST').detail, /needs a Host header/)
    const two = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n')
    assert.match(problemOf(two, 400, 'ERR_GATEWAY_BAD_REQUEST').detail, /2 Host headers/)
  })

  test('CONNECT is a 405; an unknown Expect a 417', async () => {
    problemOf(
      await rawExchange(port, 'CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n'),
      405,
      'ERR_GATEWAY_METHOD_NOT_ALLOWED',
    )
    problemOf(
      await rawExchange(port, 'POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n'),
      417,
      'ERR_GATEWAY_EXPECTATION_FAILED',
    )
  })

  test('one address may hold 3 connections; the 4th gets a 429, others are still served', async () => {
    const held = await Promise.all(
      [1, 2, 3].map(
        () =>
          new Promise<Socket>((resolve) => {
            const s = connect({ port, host: '127.0.0.1', localAddress: '127.0.0.2' }, () => resolve(s))
            s.on('error', () => undefined)
          }),
      ),
    )
    try {
      await new Promise((r) => setTimeout(r, 50))
      assert.equal(guard.connections().get('127.0.0.2'), 3)
      const refused = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', {
        localAddress: '127.0.0.2',
      })
      problemOf(refused, 429, 'ERR_GATEWAY_TOO_MANY_CONNECTIONS')
      assert.equal(refused.headers['retry-after'], '1')
      const fine = await ok()
      assert.equal(fine.status, 200)
      assert.equal(fine.body, 'ok /fine')
    } finally {
      for (const s of held) s.destroy()
    }
  })

  test('the server still answers after all of the above', async () => {
    assert.equal((await ok()).status, 200)
  })
})
