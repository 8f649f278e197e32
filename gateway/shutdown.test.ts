import assert from 'node:assert/strict'
import { createServer, request } from 'node:http'
import type { AddressInfo } from 'node:net'
import { test } from 'node:test'
import { drainServer } from './shutdown.ts'

test('drainServer lets an in-flight request finish, then closes', async () => {
  const server = createServer((_req, res) => setTimeout(() => res.end('done'), 100))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address() as AddressInfo
  const body = new Promise<string>((resolve, reject) => {
    request({ port, host: '127.0.0.1' }, (res) => {
      let text = ''
      res.on('data', (c: Buffer) => (text += c.toString()))
      res.on('end', () => resolve(text))
    })
      .on('error', reject)
      .end()
  })
  await new Promise((r) => setTimeout(r, 20))
  await drainServer(server, 2000)
  assert.equal(await body, 'done')
  assert.equal(server.listening, false)
})

test('drainServer cuts off requests that outlive the grace period', async () => {
  const server = createServer(() => undefined)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address() as AddressInfo
  const failed = new Promise<string>((resolve) => {
    request({ port, host: '127.0.0.1' })
      .on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? ''))
      .end()
  })
  await new Promise((r) => setTimeout(r, 20))
  const started = Date.now()
  await drainServer(server, 50)
  assert.ok(Date.now() - started < 1000)
  assert.equal(await failed, 'ECONNRESET')
})
