import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { createStaticCatalog } from '../catalog.ts'
import { createTestGateway, testManifest, type Echo } from '../test-support.ts'
import { createUpstreamAgents } from '../upstream-agents.ts'
import { createWebForwarder } from '../web-forwarder.ts'
import { createAttemptRunner } from './attempt.ts'
import type { InvocationData } from './invocation.ts'

describe('an attempt', async () => {
  const manifest = testManifest('echo', { request: '1s' })
  const g = await createTestGateway({ manifests: [manifest], autoRestore: true })
  const agents = createUpstreamAgents()
  after(async () => {
    agents.close()
    await g.close()
  })
  const run = createAttemptRunner({
    catalog: createStaticCatalog([manifest]),
    pool: g.pool,
    forwarder: createWebForwarder({ agents }),
  })
  const invocation = (path: string, body = '', fn = 'echo'): InvocationData => ({
    id: `${fn}.00000000-0000-0000-0000-000000000001`,
    fn,
    request: {
      method: 'POST',
      path,
      headers: { 'content-type': 'text/plain', 'content-length': String(body.length) },
      body: Buffer.from(body).toString('base64'),
    },
    acceptedAt: 0,
    requestId: 'req-1',
    requestHash: 'h',
  })

  test('goes through a cold start and sends the stored request with the invocation id', async () => {
    const outcome = await run(invocation('/hello?x=1', 'payload'), 2)
    assert.equal(outcome.kind, 'response')
    if (outcome.kind !== 'response') return
    assert.equal(outcome.result.status, 200)
    const echo = JSON.parse(Buffer.from(outcome.result.body, 'base64').toString()) as Echo
    assert.equal(echo.method, 'POST')
    assert.equal(echo.url, '/hello?x=1')
    assert.equal(echo.bodyBytes, 7)
    assert.equal(echo.headers['x-invocation-id'], 'echo.00000000-0000-0000-0000-000000000001')
    assert.equal(echo.headers['x-invocation-attempt'], '2')
    assert.equal(echo.headers['x-request-id'], 'req-1')
    assert.equal(g.queue.jobs.length, 1, 'one restore')
    assert.equal(typeof outcome.sentAt, 'number')
  })

  test('a function status is an outcome; a connection cut mid-answer is a retryable error', async () => {
    const status = await run(invocation('/status/503'), 1)
    assert.equal(status.kind === 'response' && status.result.status, 503)
    const died = await run(invocation('/die'), 1)
    assert.equal(died.kind, 'error')
    assert.equal(died.kind === 'error' && died.retryable, true)
  })

  test('an unknown function is a final error', async () => {
    const gone = await run(invocation('/', '', 'gone'), 1)
    assert.deepEqual(gone.kind === 'error' && [gone.code, gone.retryable], ['ERR_FUNCTION_NOT_FOUND', false])
  })
})
