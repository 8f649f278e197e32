import assert from 'node:assert/strict'
import { test } from 'node:test'
import { decodeRestoreFailure, encodeRestoreFailure, type RestoreFailure } from './contracts.ts'
import { isInitlessError } from './errors.ts'
import { createFakeRegistry } from './registry-fake.ts'
import { createRestoreClient, newInstanceId } from './restore-client.ts'
import { createFakeRestoreQueue } from './restore-queue-fake.ts'

const setup = () => {
  const registry = createFakeRegistry()
  const queue = createFakeRestoreQueue()
  return { registry, queue, client: createRestoreClient({ registry, queue, now: () => 1000 }) }
}

test('one instance id format: the function name and 12 hex digits', () => {
  assert.match(newInstanceId('hello-node'), /^hello-node-[0-9a-f]{12}$/)
  assert.notEqual(newInstanceId('f'), newInstanceId('f'))
})

test('start reserves the id in the registry, then enqueues a job with that id and the options', async () => {
  const { registry, queue, client } = setup()
  const id = await client.start({
    fn: 'f',
    maxInstances: 2,
    reason: 'prewarm',
    traceId: 't1',
    options: { runtime: 'eager', noPool: true },
  })
  assert.ok(id)
  assert.deepEqual(
    (await registry.list('f')).map((r) => [r.id, r.state]),
    [[id, 'starting']],
  )
  assert.deepEqual(queue.jobs, [
    {
      fn: 'f',
      instanceId: id,
      traceId: 't1',
      enqueuedAt: 1000,
      reason: 'prewarm',
      runtime: 'eager',
      noPool: true,
    },
  ])
})

test('start at maxInstances reserves nothing and enqueues nothing', async () => {
  const { queue, client } = setup()
  assert.ok(await client.start({ fn: 'f', maxInstances: 1, reason: 'demand' }))
  assert.equal(await client.start({ fn: 'f', maxInstances: 1, reason: 'demand' }), undefined)
  assert.equal(queue.jobs.length, 1)
})

test('a failed enqueue withdraws the reservation and passes the error on', async () => {
  const { registry, queue, client } = setup()
  queue.setAvailable(false)
  await assert.rejects(client.start({ fn: 'f', maxInstances: 1, reason: 'demand' }), /unavailable/)
  await new Promise((r) => setImmediate(r))
  assert.deepEqual(await registry.list('f'), [])
})

test('a throw from onReserved withdraws the reservation before anything is enqueued', async () => {
  const { registry, queue, client } = setup()
  const req = {
    fn: 'f',
    maxInstances: 1,
    reason: 'demand' as const,
    onReserved: () => {
      throw new Error('closing')
    },
  }
  await assert.rejects(client.start(req), /closing/)
  await new Promise((r) => setImmediate(r))
  assert.deepEqual(await registry.list('f'), [])
  assert.equal(queue.jobs.length, 0)
})

test('restore resolves with the job result of its own instance', async () => {
  const { queue, client } = setup()
  queue.onJob((job) => {
    queue.complete('other-instance')
    queue.complete(job.instanceId)
  })
  const result = await client.restore({ fn: 'f', maxInstances: 1, reason: 'demand' }, 1000)
  assert.equal(result.fn, 'f')
  assert.match(result.instanceId, /^f-[0-9a-f]{12}$/)
})

const failures: { name: string; failure: RestoreFailure | string; code: string; retryable: boolean }[] = [
  {
    name: 'a catalogued code keeps its code and retryability',
    failure: { code: 'ERR_SNAPSHOT_NOT_FOUND', message: 'no snapshot', retryable: false },
    code: 'ERR_SNAPSHOT_NOT_FOUND',
    retryable: false,
  },
  {
    name: 'an unknown code is a retryable ERR_RESTORE_FAILED',
    failure: { code: 'ERR_NOT_IN_THE_CATALOGUE', message: 'x', retryable: false },
    code: 'ERR_RESTORE_FAILED',
    retryable: true,
  },
  {
    name: "BullMQ's own reason (no envelope) is a retryable ERR_RESTORE_FAILED",
    failure: 'job stalled more than allowable limit',
    code: 'ERR_RESTORE_FAILED',
    retryable: true,
  },
]
for (const c of failures) {
  test(`restore failure: ${c.name}`, async () => {
    const { registry, queue, client } = setup()
    queue.onJob((job) => queue.fail(job.instanceId, c.failure))
    await assert.rejects(client.restore({ fn: 'f', maxInstances: 1, reason: 'demand' }, 1000), (err) => {
      assert.ok(isInitlessError(err))
      assert.equal(err.code, c.code)
      assert.equal(err.retryable, c.retryable)
      assert.match(err.message, /^restore of f failed: /)
      return true
    })
    assert.equal(queue.jobs.length, 1)
    // The reservation is the executor's to withdraw (worker onFailed), not the client's.
    assert.equal((await registry.list('f')).length, 1)
  })
}

test('restore of a full function fails with ERR_GATEWAY_NO_CAPACITY; a silent job times out', async () => {
  const { client } = setup()
  await assert.rejects(client.restore({ fn: 'f', maxInstances: 0, reason: 'demand' }, 1000), (err) =>
    isInitlessError(err, 'ERR_GATEWAY_NO_CAPACITY'),
  )
  await assert.rejects(client.restore({ fn: 'f', maxInstances: 1, reason: 'demand' }, 30), (err) =>
    isInitlessError(err, 'ERR_GATEWAY_TIMEOUT'),
  )
})

test('the failure envelope survives its trip through a job failure reason', () => {
  const failure = { code: 'ERR_BUILD_FAILED', message: 'npm: exit 1\nERR_X: y', retryable: false }
  assert.deepEqual(decodeRestoreFailure(encodeRestoreFailure(failure)), failure)
  for (const reason of ['', 'null', '42', '{"code":"ERR_X"}', 'ERR_SNAPSHOT_NOT_FOUND: no snapshot'])
    assert.deepEqual(decodeRestoreFailure(reason), {
      code: 'ERR_RESTORE_FAILED',
      message: reason,
      retryable: true,
    })
})
