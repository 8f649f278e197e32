import assert from 'node:assert/strict'
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { after, before, describe, test } from 'node:test'
import { isInitlessError } from '../shared/errors.ts'
import { createSilentLogger } from '../shared/logger.ts'
import type { Forwarder } from './forwarder.ts'
import { createNodeForwarder } from './node-forwarder.ts'
import { createUpstreamAgents } from './upstream-agents.ts'

describe('node forwarder', () => {
  const agents = createUpstreamAgents()
  const forwarder: Forwarder = createNodeForwarder({ agents, logger: createSilentLogger() })
  let seen: { method?: string; url?: string; headers: IncomingHttpHeaders }[] = []
  let instance: Server
  let proxy: Server
  let port = 0
  const errors: unknown[] = []

  before(async () => {
    instance = createServer((req, res) => {
      seen.push({ method: req.method, url: req.url, headers: req.headers })
      if (req.url === '/never') return
      res.end('ok')
    })
    await new Promise<void>((r) => instance.listen(0, '127.0.0.1', r))
    const target = { host: '127.0.0.1', port: (instance.address() as AddressInfo).port }
    proxy = createServer((incoming, outgoing) => {
      forwarder
        .forward({
          target,
          path: incoming.url ?? '/',
          node: { incoming, outgoing },
          requestHeaders: { 'x-request-id': 'r1' },
          responseHeaders: () => ({ 'x-request-id': 'r1' }),
          maxBodyBytes: 100,
          timeoutMs: 200,
        })
        .catch((err: unknown) => {
          errors.push(err)
          outgoing.writeHead(isInitlessError(err) ? err.status : 500).end()
        })
    })
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r))
    port = (proxy.address() as AddressInfo).port
  })
  after(async () => {
    agents.close()
    instance.closeAllConnections()
    await new Promise((r) => instance.close(r))
    await new Promise((r) => proxy.close(r))
  })

  const send = (method: string, path: string) =>
    new Promise<number>((resolve, reject) => {
      const req = request({ port, host: '127.0.0.1', method, path, agent: false }, (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode ?? 0))
      })
      req.on('error', reject)
      req.end()
    })

  test('a DELETE without a body goes upstream with Content-Length: 0, the path as given', async () => {
    seen = []
    assert.equal(await send('DELETE', '//a//b?x=1'), 200)
    assert.equal(seen[0]?.method, 'DELETE')
    assert.equal(seen[0]?.url, '//a//b?x=1')
    assert.equal(seen[0]?.headers['content-length'], '0')
    assert.equal(seen[0]?.headers['x-request-id'], 'r1')
  })

  test('an instance that does not answer in time: ERR_GATEWAY_TIMEOUT (504)', async () => {
    assert.equal(await send('GET', '/never'), 504)
    const err = errors.at(-1)
    assert.ok(isInitlessError(err) && err.code === 'ERR_GATEWAY_TIMEOUT')
  })
})
