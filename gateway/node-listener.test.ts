import assert from 'node:assert/strict'
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { after, before, describe, test } from 'node:test'
import { createSilentLogger } from '../shared/logger.ts'
import { createNodeForwarder } from './node-forwarder.ts'
import { isDirectTarget } from './node-listener.ts'
import type { Problem } from './problem.ts'
import { splitUrl } from './routes/invoke.ts'
import { createTestGateway, testManifest, type Echo, type TestGateway } from './test-support.ts'

describe('isDirectTarget', () => {
  const cases: { target: string; host?: string; want: boolean }[] = [
    { target: '/fn/hello', want: true },
    { target: '/fn/hello/', want: true },
    { target: '/fn/hello/a/b?x=1&y=%20z', want: true },
    { target: '/fn/hello?', want: true },
    { target: '/fn/hello/a;b=c/@x~', want: true },
    // The URL parser would change these (or route them elsewhere): hono serves them.
    { target: '/fn/hello/../admin', want: false },
    { target: '/fn/hello/%2E%2e/admin', want: false },
    { target: '/fn/hello/./x', want: false },
    { target: '/fn/hello/.well-known', want: false },
    { target: '/fn/hello/a\\b', want: false },
    { target: '/fn/hello/"quoted"', want: false },
    { target: '/fn/hello/{x}', want: false },
    { target: "/fn/hello/x?a='b'", want: false },
    { target: '/fn/hello/é', want: false },
    { target: '/fn/Hello/x', want: false },
    { target: '/fn//x', want: false },
    { target: '/fn/', want: false },
    { target: 'http://gw/fn/hello/', want: false },
    { target: '/fn/hello/', host: 'GW.example', want: false },
    { target: '/fn/hello/', host: 'gw.123', want: false },
    { target: '/fn/hello/', host: '[::1]:8080', want: false },
    { target: '/fn/hello/', host: 'a b', want: false },
    { target: '/fn/hello/', host: '10.0.0.1:8080', want: true },
  ]
  for (const c of cases) {
    test(`${c.target} (host ${c.host ?? 'gw:8080'}) -> ${c.want}`, () => {
      assert.equal(isDirectTarget(c.target, c.host ?? 'gw:8080'), c.want)
    })
  }

  test('a direct target is exactly what the URL parser would make of it', () => {
    for (let code = 0x21; code < 0x7f; code++) {
      const ch = String.fromCharCode(code)
      for (const target of [`/fn/hello/a${ch}b`, `/fn/hello/${ch}${ch}/c`, `/fn/hello/x?q=${ch}`]) {
        if (!isDirectTarget(target, 'gw:8080')) continue
        const url = new URL(`http://gw:8080${target}`)
        assert.equal(url.pathname + url.search, target)
      }
    }
  })
})

test('splitUrl gives what new URL() gives for the URLs node-server builds', () => {
  for (const href of [
    'http://gw:8080/fn/hello/a/b?x=1&y=2',
    'http://gw:8080/fn/hello',
    'https://gw/fn/hello/?',
    'http://gw/fn/hello/x?q#frag',
    'http://user:pw@gw:1/fn/a%2Fb/c?d=%20',
  ]) {
    const url = new URL(href)
    assert.deepEqual(splitUrl(href), {
      pathname: url.pathname,
      search: url.search,
      host: url.host,
      isHttps: url.protocol === 'https:',
    })
  }
})

interface Answer {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly body: string
}

describe('the node:http listener', () => {
  let g: TestGateway
  let server: Server
  let port = 0
  const logger = createSilentLogger()

  const send = (path: string, o: { method?: string; headers?: Record<string, string>; body?: string } = {}) =>
    new Promise<Answer>((resolve, reject) => {
      const req = request(
        { host: '127.0.0.1', port, path, method: o.method ?? 'GET', headers: o.headers },
        (res) => {
          let body = ''
          res.setEncoding('utf8')
          res.on('data', (chunk: string) => (body += chunk))
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
        },
      )
      req.on('error', reject)
      req.end(o.body)
    })

  const problemOf = (a: Answer, status: number, code: string): Problem => {
    assert.equal(a.status, status)
    assert.equal(a.headers['content-type'], 'application/problem+json')
    assert.equal(a.headers['content-length'], String(Buffer.byteLength(a.body)))
    const body = JSON.parse(a.body) as Problem
    assert.equal(body.code, code)
    assert.equal(a.headers['x-request-id'], body.requestId)
    return body
  }

  before(async () => {
    g = await createTestGateway({
      manifests: [testManifest('hello')],
      autoRestore: true,
      forwarder: (agents) => createNodeForwarder({ agents, logger }),
      options: { maxBodyBytes: 1000 },
    })
    server = createServer(g.listener)
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    port = (server.address() as AddressInfo).port
  })
  after(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
    await g.close()
  })

  test('a function request is proxied with the prefix stripped, our headers, and the caller’s id', async () => {
    const cold = await send('/fn/hello/a/b?x=1', { headers: { 'x-request-id': 'req-direct-1' } })
    assert.equal(cold.status, 200)
    const echo = JSON.parse(cold.body) as Echo
    assert.equal(echo.url, '/a/b?x=1')
    assert.equal(echo.headers['x-request-id'], 'req-direct-1')
    assert.equal(echo.headers['x-forwarded-for'], '127.0.0.1')
    assert.equal(echo.headers['x-forwarded-host'], `127.0.0.1:${port}`)
    assert.equal(echo.headers['x-forwarded-proto'], 'http')
    assert.equal(cold.headers['x-request-id'], 'req-direct-1')
    assert.match(String(cold.headers['server-timing']), /^cold, wait;dur=[\d.]+, queue;dur=3, /)

    const warm = await send('/fn/hello?', {
      headers: { 'x-request-id': 'bad id', 'x-forwarded-for': '6.6.6.6' },
    })
    const again = JSON.parse(warm.body) as Echo
    assert.equal(again.url, '/')
    assert.equal(again.headers['x-forwarded-for'], '127.0.0.1')
    assert.match(String(warm.headers['x-request-id']), /^[0-9a-f-]{36}$/)
    assert.match(String(warm.headers['server-timing']), /^warm, upstream;dur=[\d.]+$/)
    assert.equal(g.queue.jobs.length, 1)
  })

  test('request bodies stream through; a Content-Length over the limit is a 413 before proxying', async () => {
    const post = await send('/fn/hello/up', { method: 'POST', body: 'x'.repeat(900) })
    assert.equal((JSON.parse(post.body) as Echo).bodyBytes, 900)
    const before = g.servers.reduce((n, s) => n + s.count(), 0)
    problemOf(
      await send('/fn/hello/up', { method: 'POST', body: 'x'.repeat(1001) }),
      413,
      'ERR_GATEWAY_BODY_TOO_LARGE',
    )
    assert.equal(
      g.servers.reduce((n, s) => n + s.count(), 0),
      before,
    )
  })

  test('errors are the app’s problem answers, whichever lane served the request', async () => {
    problemOf(await send('/fn/nope/x'), 404, 'ERR_FUNCTION_NOT_FOUND')
    // Dot segments go through hono, whose URL resolves them: /fn/x, an unknown function.
    problemOf(await send('/fn/hello/%2e%2e/x'), 404, 'ERR_FUNCTION_NOT_FOUND')
    problemOf(await send('/fn/hello/../../admin/functions'), 404, 'ERR_GATEWAY_NOT_FOUND')
    problemOf(await send('/fn/Hello/x'), 404, 'ERR_FUNCTION_NAME_INVALID')
    const health = await send('/healthz')
    assert.equal(health.status, 200)
    assert.match(String(health.headers['x-request-id']), /^[0-9a-f-]{36}$/)
  })

  test('metrics count the requests of both lanes', async () => {
    // One through hono (a dot segment), the others on the direct lane.
    await send('/fn/hello/.well-known/x')
    const text = (await send('/metrics')).body
    assert.match(
      text,
      /initless_gateway_invocations_total\{function="hello",status="200",start="warm"\} [3-9]/,
    )
  })
})
