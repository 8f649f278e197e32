import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { promisify } from 'node:util'
import { isInitlessError } from '../../shared/errors.ts'
import type { Settings } from './env-file.ts'
import { processCommand } from './process-command.ts'
import {
  EXECUTOR_STOP_MARGIN_S,
  GATEWAY_STOP_MARGIN_S,
  isManaged,
  MANAGED_MARKER,
  planQueueRedis,
  planRedis,
  planService,
  renderUnits,
  type PlanInput,
  type UnitFile,
} from './units.ts'

const exec = promisify(execFile)
const ROOT = '/opt/initless'

function input(settings: Settings = {}, over: Partial<PlanInput> = {}): PlanInput {
  return {
    settings,
    root: ROOT,
    node: process.execPath,
    envFile: '/etc/initless/initless.env',
    redisServer: '/usr/bin/redis-server',
    manageRedis: true,
    exists: () => false,
    ...over,
  }
}

function units(settings: Settings = {}, over: Partial<PlanInput> = {}): Map<string, string> {
  return new Map(renderUnits(planService(input(settings, over))).map((u) => [u.name, u.text]))
}

/** Every value of `key` in the unit's text, in order. */
function values(text: string, key: string): string[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1))
}

const one = (text: string, key: string) => {
  const v = values(text, key)
  assert.equal(v.length, 1, `${key} set ${v.length} times`)
  return v[0]!
}

describe('processCommand', () => {
  test('prefers the compiled build, else runs the source through tsx', () => {
    const node = '/usr/bin/node'
    assert.deepEqual(processCommand('executor', ROOT, { node, exists: () => false }), [
      node,
      '--import',
      'tsx',
      '/opt/initless/executor/main.ts',
    ])
    const built = (p: string) => p === '/opt/initless/dist/gateway/main.js'
    assert.deepEqual(processCommand('gateway', ROOT, { node, exists: built }), [
      node,
      '/opt/initless/dist/gateway/main.js',
    ])
    assert.equal(processCommand('executor', ROOT, { node, exists: built }).length, 4)
  })
})

describe('the executor unit', () => {
  const text = units().get('initless-executor.service')!

  test('is marked as initless’s', () => {
    assert.ok(text.startsWith(`${MANAGED_MARKER}:`))
    assert.ok(isManaged(text))
  })

  test('starts after the network, Docker and Redis, wanting but not requiring them', () => {
    const deps = 'network-online.target docker.service redis-server.service'
    assert.equal(one(text, 'Wants'), deps)
    assert.equal(one(text, 'After'), deps)
    assert.deepEqual(values(text, 'Requires'), [])
    assert.deepEqual(values(text, 'BindsTo'), [])
  })

  test('runs the executor as root from the install root with the env file', () => {
    assert.equal(one(text, 'ExecStart'), `${process.execPath} --import tsx /opt/initless/executor/main.ts`)
    assert.equal(one(text, 'WorkingDirectory'), ROOT)
    assert.equal(one(text, 'EnvironmentFile'), '/etc/initless/initless.env')
    assert.equal(one(text, 'User'), 'root')
    assert.match(one(text, 'Environment'), /^PATH=\/usr\/local\/sbin:.*:\/usr\/sbin:/)
  })

  test('keeps every capability, owns its cgroups and stops its own instances', () => {
    assert.deepEqual(values(text, 'CapabilityBoundingSet'), [])
    assert.deepEqual(values(text, 'NoNewPrivileges'), [])
    assert.equal(one(text, 'Delegate'), 'yes')
    assert.equal(one(text, 'KillMode'), 'mixed')
    // 20 s default deadline of the executor, plus the steps after it.
    assert.equal(one(text, 'TimeoutStopSec'), `${20 + EXECUTOR_STOP_MARGIN_S}s`)
    assert.equal(one(text, 'LimitNOFILE'), '1048576')
    assert.equal(one(text, 'TasksMax'), 'infinity')
  })

  test('restarts on failure, within a burst limit', () => {
    assert.equal(one(text, 'Restart'), 'on-failure')
    assert.equal(one(text, 'RestartSec'), '2s')
    assert.equal(one(text, 'StartLimitIntervalSec'), '120s')
    assert.equal(one(text, 'StartLimitBurst'), '5')
    assert.equal(one(text, 'WantedBy'), 'multi-user.target')
  })

  test('waits past a longer shutdown deadline', () => {
    const longer = units({ INITLESS_SHUTDOWN_TIMEOUT: '90500ms' }).get('initless-executor.service')!
    assert.equal(one(longer, 'TimeoutStopSec'), `${91 + EXECUTOR_STOP_MARGIN_S}s`)
  })

  test('runs the compiled build when there is one', () => {
    const built = units({}, { exists: (p) => p === '/opt/initless/dist/executor/main.js' })
    assert.equal(
      one(built.get('initless-executor.service')!, 'ExecStart'),
      `${process.execPath} /opt/initless/dist/executor/main.js`,
    )
  })
})

describe('the gateway unit', () => {
  const text = units().get('initless-gateway.service')!

  test('starts after the executor and Redis, wanting but not requiring them', () => {
    const deps = 'network-online.target initless-executor.service redis-server.service'
    assert.equal(one(text, 'Wants'), deps)
    assert.equal(one(text, 'After'), deps)
    assert.deepEqual(values(text, 'Requires'), [])
  })

  test('runs the gateway with no capability but reading files', () => {
    assert.equal(one(text, 'ExecStart'), `${process.execPath} --import tsx /opt/initless/gateway/main.ts`)
    assert.equal(one(text, 'CapabilityBoundingSet'), 'CAP_DAC_READ_SEARCH')
    assert.equal(one(text, 'NoNewPrivileges'), 'yes')
    assert.equal(one(text, 'TimeoutStopSec'), `${10 + GATEWAY_STOP_MARGIN_S}s`)
    assert.equal(one(text, 'Restart'), 'on-failure')
    assert.equal(one(text, 'EnvironmentFile'), '/etc/initless/initless.env')
  })

  test('may bind a privileged port when it is configured to listen on one', () => {
    const on80 = units({ INITLESS_GATEWAY_PORT: '80' }).get('initless-gateway.service')!
    assert.equal(one(on80, 'CapabilityBoundingSet'), 'CAP_DAC_READ_SEARCH CAP_NET_BIND_SERVICE')
  })
})

describe('Redis', () => {
  const opts = { manageRedis: true, redisServer: '/usr/bin/redis-server' }
  const cases: [string, ReturnType<typeof planRedis>['kind']][] = [
    ['redis://127.0.0.1:6379', 'system'],
    ['redis://localhost', 'system'],
    ['redis://[::1]:6379/1', 'system'],
    ['redis://127.0.0.1:6380', 'own'],
    ['redis://10.0.0.5:6379', 'external'],
    ['redis://redis.internal:6379', 'external'],
    ['rediss://127.0.0.1:6379', 'external'],
  ]
  for (const [url, kind] of cases)
    test(`${url}: ${kind}`, () => assert.equal(planRedis(url, '/var/lib/initless', opts).kind, kind))

  test('--no-redis: neither a unit nor a dependency', () => {
    assert.deepEqual(planRedis('redis://127.0.0.1:6379', '/x', { ...opts, manageRedis: false }), {
      kind: 'external',
      reason: 'not managed here (--no-redis)',
    })
    const u = units({}, { manageRedis: false })
    assert.deepEqual([...u.keys()], ['initless-executor.service', 'initless-gateway.service'])
    assert.equal(one(u.get('initless-executor.service')!, 'After'), 'network-online.target docker.service')
  })

  test('a port other than 6379 gets a unit of initless’s own, started as provision.sh starts it', () => {
    const u = units({ INITLESS_REDIS_URL: 'redis://127.0.0.1:6390', INITLESS_STATE_DIR: '/srv/initless' })
    assert.deepEqual(
      [...u.keys()],
      ['initless-executor.service', 'initless-gateway.service', 'initless-redis.service'],
    )
    const redis = u.get('initless-redis.service')!
    assert.ok(isManaged(redis))
    assert.equal(one(redis, 'Type'), 'notify')
    assert.equal(
      one(redis, 'ExecStart'),
      '/usr/bin/redis-server --port 6390 --bind 127.0.0.1 --dir /srv/initless/redis --appendonly yes ' +
        '--save "" --supervised systemd --daemonize no',
    )
    assert.equal(one(u.get('initless-gateway.service')!, 'Wants').split(' ').at(-1), 'initless-redis.service')
  })

  test('an external Redis is no unit’s concern', () => {
    const u = units({ INITLESS_REDIS_URL: 'redis://10.1.2.3:6379' })
    assert.equal(u.size, 2)
    assert.doesNotMatch(u.get('initless-gateway.service')!, /redis/)
  })
})

describe('the queue Redis', () => {
  const managed = { manageRedis: true }
  const REGISTRY = 'redis://127.0.0.1:6379'
  test('where it is decides what the gateway depends on', () => {
    assert.deepEqual(planQueueRedis(undefined, REGISTRY, managed), { kind: 'same' })
    assert.deepEqual(planQueueRedis(REGISTRY, REGISTRY, managed), { kind: 'same' })
    assert.deepEqual(planQueueRedis('redis://127.0.0.1:6381', REGISTRY, managed), {
      kind: 'system',
      unit: 'redis-server@initless-queue.service',
    })
    assert.equal(planQueueRedis('redis://10.0.0.7:6379', REGISTRY, managed).kind, 'external')
    assert.equal(planQueueRedis('redis://127.0.0.1:6381', REGISTRY, { manageRedis: false }).kind, 'external')
  })

  test('the gateway, not the executor, is ordered after provisioning’s queue Redis', () => {
    const u = units({ INITLESS_ASYNC_REDIS_URL: 'redis://127.0.0.1:6381' })
    assert.equal(
      one(u.get('initless-gateway.service')!, 'After'),
      'network-online.target initless-executor.service redis-server.service redis-server@initless-queue.service',
    )
    assert.equal(
      one(u.get('initless-executor.service')!, 'After'),
      'network-online.target docker.service redis-server.service',
    )
    assert.equal(u.size, 2)
  })
})

describe('bad input', () => {
  test("every problem of both processes' settings at once", () => {
    assert.throws(
      () =>
        planService(
          input({ INITLESS_SUBNET: '10.0.0.0', INITLESS_GATEWAY_PORT: '70000', INITLESS_LOG_LEVEL: 'loud' }),
        ),
      (err) => {
        assert.ok(isInitlessError(err, 'ERR_CONFIG_INVALID'))
        const lines = err.message.split('\n').slice(1)
        assert.deepEqual(lines.map((l) => l.trim().split(':')[0]).sort(), [
          'INITLESS_GATEWAY_PORT',
          'INITLESS_LOG_LEVEL',
          'INITLESS_SUBNET',
        ])
        return true
      },
    )
  })

  test('paths a unit cannot hold', () => {
    assert.throws(
      () => planService(input({}, { root: 'relative/root', envFile: '/etc/init\nless.env' })),
      (err) =>
        isInitlessError(err, 'ERR_CONFIG_INVALID') &&
        /install root: expected an absolute path/.test(err.message) &&
        /env file: expected an absolute path/.test(err.message),
    )
  })
})

describe("systemd's own parser", () => {
  /** `systemd-analyze verify` of the units, from a directory of their own. */
  async function verify(list: UnitFile[]): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'initless-units-'))
    try {
      for (const u of list) await writeFile(join(dir, u.name), u.text)
      const res = await exec('systemd-analyze', ['verify', '--man=no', ...list.map((u) => u.name)], {
        cwd: dir,
      }).then(
        (r) => ({ code: 0, stderr: r.stderr }),
        (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
      )
      return `exit ${res.code}\n${res.stderr.trim()}`.trim()
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }

  test('accepts every unit, with odd characters in the install path', async () => {
    const plan = planService(
      input(
        { INITLESS_REDIS_URL: 'redis://127.0.0.1:6390', INITLESS_STATE_DIR: '/srv/state 100%' },
        { root: '/opt/my "initless" 100% $HOME\\x' },
      ),
    )
    assert.equal(await verify(renderUnits(plan)), 'exit 0')
  })

  test('is the judge: it rejects a unit it cannot parse', async () => {
    const [executor] = renderUnits(planService(input()))
    const broken = {
      name: executor!.name,
      text: executor!.text.replace('TimeoutStopSec=65s', 'TimeoutStopSec=soon'),
    }
    assert.match(await verify([broken]), /Failed to parse .*soon/)
  })
})
