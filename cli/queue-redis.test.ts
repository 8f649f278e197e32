import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { isInitlessError } from '../shared/errors.ts'
import { checkQueueRedis } from './queue-redis-probe.ts'
import { isLocalRedisUrl, queueRedis, queueRedisEnv, type QueueRedisState } from './queue-redis.ts'

describe('queueRedis: where `initless up`, service install and doctor put the queues', () => {
  const cases: [string, Record<string, string>, ReturnType<typeof queueRedis>][] = [
    [
      'nothing set: the provisioned queue Redis',
      {},
      { url: 'redis://127.0.0.1:6381', source: 'provisioned' },
    ],
    [
      'a local registry Redis on another port: still the provisioned one',
      { INITLESS_REDIS_URL: 'redis://localhost:6390' },
      { url: 'redis://127.0.0.1:6381', source: 'provisioned' },
    ],
    [
      'provisioning told to use another port',
      { INITLESS_ASYNC_REDIS_PORT: '16381' },
      { url: 'redis://127.0.0.1:16381', source: 'provisioned' },
    ],
    [
      'the operator’s setting wins',
      { INITLESS_ASYNC_REDIS_URL: 'redis://10.0.0.7:7000', INITLESS_ASYNC_REDIS_PORT: '16381' },
      { url: 'redis://10.0.0.7:7000', source: 'setting' },
    ],
    [
      'the operator may keep the queues on the registry’s Redis',
      { INITLESS_ASYNC_REDIS_URL: 'redis://127.0.0.1:6379' },
      { url: 'redis://127.0.0.1:6379', source: 'setting' },
    ],
    [
      'a registry Redis on another host: shared by several hosts, so no local default',
      { INITLESS_REDIS_URL: 'redis://10.0.0.5:6379' },
      { url: 'redis://10.0.0.5:6379', source: 'registry' },
    ],
    [
      'TLS to a local port is no Redis provision.sh starts',
      { INITLESS_REDIS_URL: 'rediss://127.0.0.1:6379' },
      { url: 'rediss://127.0.0.1:6379', source: 'registry' },
    ],
  ]
  for (const [name, env, want] of cases) test(name, () => assert.deepEqual(queueRedis(env), want))

  test('an empty setting counts as unset', () => {
    assert.equal(
      queueRedis({ INITLESS_ASYNC_REDIS_URL: '', INITLESS_ASYNC_REDIS_PORT: '' }).source,
      'provisioned',
    )
  })

  test('a bad INITLESS_ASYNC_REDIS_PORT is a configuration error', () => {
    for (const port of ['0', '70000', 'six', '63 81'])
      assert.throws(
        () => queueRedis({ INITLESS_ASYNC_REDIS_PORT: port }),
        (err) => isInitlessError(err, 'ERR_CONFIG_INVALID') && err.message.includes(`'${port}'`),
      )
  })

  test('the environment it gives the gateway', () => {
    assert.deepEqual(queueRedisEnv({ url: 'redis://127.0.0.1:6381', source: 'provisioned' }), {
      INITLESS_ASYNC_REDIS_URL: 'redis://127.0.0.1:6381',
    })
    // The gateway's own default is the registry's Redis: nothing to set.
    assert.deepEqual(queueRedisEnv({ url: 'redis://10.0.0.5:6379', source: 'registry' }), {})
  })

  test('local Redis URLs', () => {
    for (const url of [
      'redis://127.0.0.1:6379',
      'redis://127.1.2.3',
      'redis://localhost:1',
      'redis://[::1]:6380',
    ])
      assert.ok(isLocalRedisUrl(url), url)
    for (const url of ['rediss://127.0.0.1', 'redis://10.0.0.1', 'redis://redis.internal', 'not a url'])
      assert.ok(!isLocalRedisUrl(url), url)
  })
})

describe('checkQueueRedis: what `initless up` does before it starts', () => {
  const durable: QueueRedisState = { version: '7.0.15', appendonly: 'yes', appendfsync: 'always' }

  test('the provisioned queue Redis, durable: the gateway gets its URL', async () => {
    const probed: string[] = []
    const r = await checkQueueRedis({}, async (url) => (probed.push(url), durable))
    assert.deepEqual(probed, ['redis://127.0.0.1:6381'])
    assert.deepEqual(r.env, { INITLESS_ASYNC_REDIS_URL: 'redis://127.0.0.1:6381' })
    assert.deepEqual(r.lines, [
      'asynchronous invocations: queues on redis://127.0.0.1:6381 (the queue Redis scripts/provision.sh starts), appendonly yes, appendfsync always',
    ])
  })

  test('an everysec Redis starts with a warning that says how to fix it', async () => {
    const r = await checkQueueRedis({ INITLESS_ASYNC_REDIS_URL: 'redis://127.0.0.1:7001' }, async () => ({
      ...durable,
      appendfsync: 'everysec',
    }))
    assert.deepEqual(r.env, { INITLESS_ASYNC_REDIS_URL: 'redis://127.0.0.1:7001' })
    assert.equal(r.lines.length, 2)
    assert.match(
      r.lines[1]!,
      /^warning: a 202 is not fsynced there: redis-cli -u redis:\/\/127\.0\.0\.1:7001 config set appendonly yes && .* appendfsync always/,
    )
  })

  test('a queue Redis that does not answer stops the start, saying how to fix it', async () => {
    await assert.rejects(
      checkQueueRedis({}, async () => {
        throw new Error('connect ECONNREFUSED 127.0.0.1:6381')
      }),
      (err) =>
        isInitlessError(err, 'ERR_ASYNC_UNAVAILABLE') &&
        /^the queue Redis at redis:\/\/127\.0\.0\.1:6381 \(.*\) does not answer \(connect ECONNREFUSED 127\.0\.0\.1:6381\): run `bash scripts\/provision\.sh`.*INITLESS_ASYNC_REDIS_URL/.test(
          err.message,
        ),
    )
  })

  test('a registry Redis on another host: the queues stay there, nothing probed', async () => {
    const r = await checkQueueRedis({ INITLESS_REDIS_URL: 'redis://10.0.0.5:6379' }, async () => {
      throw new Error('not probed')
    })
    assert.deepEqual(r.env, {})
    assert.match(r.lines[0]!, /queues on redis:\/\/10\.0\.0\.5:6379 \(the registry's Redis/)
  })
})
