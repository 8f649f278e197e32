import assert from 'node:assert/strict'
import { createServer, request } from 'node:http'
import type { AddressInfo } from 'node:net'
import { test } from 'node:test'
import { createSilentLogger } from '../shared/logger.ts'
import { createShutdown, drainServer } from './shutdown.ts'

const logger = createSilentLogger()

test('runs every step once, even when one throws, and is idempotent', async () => {
  const ran: string[] = []
  const shutdown = createShutdown({
    logger,
    deadlineMs: 1000,
    steps: [
      { name: 'a', run: () => void ran.push('a') },
      {
        name: 'b',
        run: () => {
          ran.push('b')
          throw new Error('boom')
        },
      },
      { name: 'c', run: async () => void ran.push('c') },
    ],
  })
  const [first, second] = await Promise.all([shutdown(), shutdown()])
  assert.deepEqual(ran, ['a', 'b', 'c'])
  assert.equal(first, second)
  assert.equal(first.isClean, false)
})

test('a step that hangs is abandoned at the deadline and later steps still run', async () => {
  const ran: string[] = []
  const started = Date.now()
  const result = await createShutdown({
    logger,
    deadlineMs: 100,
    steps: [
      { name: 'hang', run: () => new Promise(() => undefined) },
      { name: 'after', run: () => void ran.push('after') },
    ],
  })()
  assert.equal(result.isClean, false)
  assert.deepEqual(ran, ['after'])
  assert.ok(Date.now() - started < 1000)
})

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
