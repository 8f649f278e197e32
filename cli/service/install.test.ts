import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, test } from 'node:test'
import { isInitlessError, type ErrorCode } from '../../shared/errors.ts'
import {
  installService,
  uninstallService,
  withoutSystemd,
  type InstallOptions,
  type ServiceDeps,
} from './install.ts'
import { createFakeServiceManager, type FakeServiceManager } from './service-manager-fake.ts'

const TOKEN = 'token-0123456789abcdef'
const BOTH = 'initless-executor.service initless-gateway.service'

let dir = ''
let unitDir = ''
let envFile = ''

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'initless-service-'))
  unitDir = join(dir, 'units')
  envFile = join(dir, 'etc', 'initless.env')
  await mkdir(unitDir)
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

function deps(manager: FakeServiceManager, env: Record<string, string> = {}): ServiceDeps {
  return {
    manager,
    env: {
      INITLESS_STATE_DIR: join(dir, 'state'),
      INITLESS_ADMIN_TOKEN: TOKEN,
      INITLESS_FUNCTIONS_DIR: 'functions',
      INITLESS_GATEWAY_URL: 'http://127.0.0.1:8080',
      HOME: '/root',
      ...env,
    },
    cwd: '/srv/checkout',
    root: '/opt/initless',
    node: '/usr/bin/node',
    redisServer: '/usr/bin/redis-server',
    exists: () => false,
  }
}

function opts(over: Partial<InstallOptions> = {}): InstallOptions {
  return { unitDir, envFile, force: false, dryRun: false, now: false, redis: true, ...over }
}

const unit = (name: string) => readFile(join(unitDir, name), 'utf8')
const mode = async (path: string) => (await stat(path)).mode & 0o777
const files = async () => (await readdir(unitDir)).sort()
const exists = (path: string) =>
  stat(path).then(
    () => true,
    () => false,
  )

/** Assert that `promise` rejects with `code` and a message matching `message`. */
async function rejects(promise: Promise<unknown>, code: ErrorCode, message: RegExp): Promise<void> {
  await assert.rejects(promise, (err) => {
    assert.ok(isInitlessError(err, code), `expected ${code}, got ${String(err)}`)
    assert.match(err.message, message)
    return true
  })
}

describe('service install', () => {
  test('writes both units and the env file, reloads systemd and enables them', async () => {
    const manager = createFakeServiceManager()
    const result = await installService(deps(manager), opts())
    assert.deepEqual(await files(), ['initless-executor.service', 'initless-gateway.service'])
    assert.equal(await mode(join(unitDir, 'initless-executor.service')), 0o644)
    assert.match(
      await unit('initless-executor.service'),
      /^ExecStart=\/usr\/bin\/node --import tsx \/opt\/initless\/executor\/main\.ts$/m,
    )
    assert.match(await unit('initless-gateway.service'), new RegExp(`^EnvironmentFile=${envFile}$`, 'm'))
    assert.deepEqual(manager.calls, ['daemon-reload', `enable ${BOTH}`])

    // The settings of the CLI's environment, relative paths resolved; mode 0600 for the token.
    assert.equal(await mode(envFile), 0o600)
    const env = await readFile(envFile, 'utf8')
    assert.match(env, new RegExp(`^INITLESS_ADMIN_TOKEN="${TOKEN}"$`, 'm'))
    assert.match(env, /^INITLESS_FUNCTIONS_DIR="\/srv\/checkout\/functions"$/m)
    assert.doesNotMatch(env, /INITLESS_GATEWAY_URL|HOME/)
    assert.deepEqual(result.ignored, ['INITLESS_GATEWAY_URL'])
    // Results are printed: never the token.
    assert.doesNotMatch(JSON.stringify(result), new RegExp(TOKEN))
    assert.deepEqual(result.redis, { kind: 'system', unit: 'redis-server.service' })
  })

  test('the env file puts the queues on the provisioned queue Redis; the gateway depends on its unit', async () => {
    const result = await installService(deps(createFakeServiceManager()), opts())
    assert.match(await readFile(envFile, 'utf8'), /^INITLESS_ASYNC_REDIS_URL="redis:\/\/127\.0\.0\.1:6381"$/m)
    assert.deepEqual(result.queueRedis, { kind: 'system', unit: 'redis-server@initless-queue.service' })
    const wants = (name: string) => /^Wants=(.*)$/m.exec(name)?.[1]?.split(' ') ?? []
    assert.ok(wants(await unit('initless-gateway.service')).includes('redis-server@initless-queue.service'))
    assert.ok(!wants(await unit('initless-executor.service')).includes('redis-server@initless-queue.service'))
    // Debian's template unit: depended on, never written.
    assert.deepEqual(await files(), ['initless-executor.service', 'initless-gateway.service'])
  })

  test('provisioning’s port is followed; an operator’s queue Redis wins; a remote registry sets none', async () => {
    const port = await installService(
      deps(createFakeServiceManager(), { INITLESS_ASYNC_REDIS_PORT: '16381' }),
      opts(),
    )
    assert.match(
      await readFile(envFile, 'utf8'),
      /^INITLESS_ASYNC_REDIS_URL="redis:\/\/127\.0\.0\.1:16381"$/m,
    )
    assert.doesNotMatch(await readFile(envFile, 'utf8'), /INITLESS_ASYNC_REDIS_PORT/)
    assert.ok(!port.ignored.includes('INITLESS_ASYNC_REDIS_PORT'), 'read here, so not reported as ignored')

    const own = await installService(
      deps(createFakeServiceManager(), { INITLESS_ASYNC_REDIS_URL: 'redis://10.0.0.7:6379' }),
      opts({ force: true }),
    )
    assert.match(await readFile(envFile, 'utf8'), /^INITLESS_ASYNC_REDIS_URL="redis:\/\/10\.0\.0\.7:6379"$/m)
    assert.equal(own.queueRedis.kind, 'external')
    assert.doesNotMatch(await unit('initless-gateway.service'), /initless-queue/)

    const remote = await installService(
      deps(createFakeServiceManager(), { INITLESS_REDIS_URL: 'redis://10.0.0.5:6379' }),
      opts({ force: true }),
    )
    assert.doesNotMatch(await readFile(envFile, 'utf8'), /INITLESS_ASYNC_REDIS_URL/)
    assert.deepEqual(remote.queueRedis, { kind: 'same' })
  })

  test('--now starts them too', async () => {
    const manager = createFakeServiceManager()
    const result = await installService(deps(manager), opts({ now: true }))
    assert.deepEqual(manager.calls, ['daemon-reload', `enable --now ${BOTH}`])
    assert.equal(result.started, true)
  })

  test('a second install changes nothing and keeps the env file', async () => {
    await installService(deps(createFakeServiceManager()), opts())
    const before = { executor: await unit('initless-executor.service'), env: await readFile(envFile, 'utf8') }
    const manager = createFakeServiceManager()
    const again = await installService(deps(manager, { INITLESS_LOG_LEVEL: 'debug' }), opts())
    assert.deepEqual(
      again.units.map((u) => u.changed),
      [false, false],
    )
    assert.equal(again.envFile.action, 'keep')
    assert.equal(await unit('initless-executor.service'), before.executor)
    assert.equal(await readFile(envFile, 'utf8'), before.env)
    assert.deepEqual(manager.calls, ['daemon-reload', `enable ${BOTH}`])
  })

  test('an existing env file is what the units are planned from; --force rewrites it', async () => {
    await mkdir(join(dir, 'etc'))
    await writeFile(envFile, 'INITLESS_SHUTDOWN_TIMEOUT=60s\nINITLESS_REDIS_URL=redis://127.0.0.1:6390\n', {
      mode: 0o600,
    })
    const kept = await installService(deps(createFakeServiceManager()), opts())
    assert.equal(kept.envFile.action, 'keep')
    assert.match(await unit('initless-executor.service'), /^TimeoutStopSec=105s$/m)
    assert.match(await unit('initless-redis.service'), /--port 6390/)
    assert.equal(
      await readFile(envFile, 'utf8'),
      'INITLESS_SHUTDOWN_TIMEOUT=60s\nINITLESS_REDIS_URL=redis://127.0.0.1:6390\n',
    )

    const manager = createFakeServiceManager()
    const forced = await installService(deps(manager), opts({ force: true }))
    assert.equal(forced.envFile.action, 'write')
    assert.doesNotMatch(await readFile(envFile, 'utf8'), /6390|60s/)
    assert.match(await unit('initless-executor.service'), /^TimeoutStopSec=65s$/m)
    // The Redis unit of the old settings is ours and no longer wanted: stopped and removed.
    assert.deepEqual(forced.removed, ['initless-redis.service'])
    assert.deepEqual(await files(), ['initless-executor.service', 'initless-gateway.service'])
    assert.deepEqual(manager.calls, [
      'disable --now initless-redis.service',
      'daemon-reload',
      `enable ${BOTH}`,
    ])
  })

  test('a Redis of its own gets a unit and its data dir', async () => {
    const manager = createFakeServiceManager()
    await installService(deps(manager, { INITLESS_REDIS_URL: 'redis://127.0.0.1:6391' }), opts({ now: true }))
    assert.match(await unit('initless-redis.service'), /--dir \S+\/state\/redis /)
    assert.equal(await mode(join(dir, 'state', 'redis')), 0o700)
    assert.deepEqual(manager.calls, ['daemon-reload', `enable --now ${BOTH} initless-redis.service`])
  })

  test('--no-redis: no unit for Redis and no dependency on one', async () => {
    await installService(deps(createFakeServiceManager()), opts({ redis: false }))
    assert.doesNotMatch(await unit('initless-executor.service'), /redis/)
  })

  test('--dry-run writes nothing and calls nothing, secrets redacted', async () => {
    const manager = createFakeServiceManager()
    const result = await installService(deps(manager), opts({ dryRun: true }))
    assert.deepEqual(await files(), [])
    assert.equal(await exists(envFile), false)
    assert.deepEqual(manager.calls, [])
    assert.equal(result.units.length, 2)
    assert.match(result.units[0]!.text, /^KillMode=mixed$/m)
    assert.match(result.envFile.text, /^INITLESS_ADMIN_TOKEN="<redacted>"$/m)
    assert.doesNotMatch(JSON.stringify(result), new RegExp(TOKEN))
    assert.equal(result.withoutSystemd, undefined)
  })

  test('--dry-run without systemd still shows the units, and what to run instead', async () => {
    const result = await installService(
      deps(createFakeServiceManager({ booted: false })),
      opts({ dryRun: true }),
    )
    assert.equal(result.units.length, 2)
    assert.match(result.withoutSystemd ?? '', /npx initless up/)
  })
})

describe('service install refuses, leaving everything as it was', () => {
  test('without systemd, saying what to run instead', async () => {
    const manager = createFakeServiceManager({ booted: false })
    const err: unknown = await installService(deps(manager), opts()).then(
      () => undefined,
      (e: unknown) => e,
    )
    assert.ok(isInitlessError(err, 'ERR_SERVICE_NO_SYSTEMD'), String(err))
    assert.match(err.message, /^systemd is not running on this host \(no \/run\/systemd\/system\)/)
    assert.ok(err.message.includes('\n  npx initless up\n'))
    assert.ok(err.message.includes(`\n  set -a; [ ! -f ${envFile} ] || . ${envFile}; set +a\n`))
    assert.match(
      err.message,
      /^ {2}nohup \/usr\/bin\/node --import tsx \/opt\/initless\/executor\/main\.ts >>/m,
    )
    assert.deepEqual(await files(), [])
    assert.equal(await exists(envFile), false)
    assert.deepEqual(manager.calls, [])
  })

  test('a unit of that name that initless did not write', async () => {
    const theirs = '[Service]\nExecStart=/usr/local/bin/their-gateway\n'
    await writeFile(join(unitDir, 'initless-gateway.service'), theirs)
    const manager = createFakeServiceManager()
    await rejects(
      installService(deps(manager), opts({ force: true })),
      'ERR_SERVICE_UNIT_CONFLICT',
      /initless-gateway\.service exists and initless did not write it .*move it away/,
    )
    assert.equal(await unit('initless-gateway.service'), theirs)
    assert.deepEqual(await files(), ['initless-gateway.service'])
    assert.equal(await exists(envFile), false)
    assert.deepEqual(manager.calls, [])
    // A dry run shows it.
    const dry = await installService(deps(manager), opts({ dryRun: true }))
    assert.deepEqual(dry.conflicts, [join(unitDir, 'initless-gateway.service')])
  })

  test('a unit dir that does not exist, or is no directory', async () => {
    for (const bad of [join(dir, 'missing'), join(dir, 'a-file')]) {
      await writeFile(join(dir, 'a-file'), '')
      await rejects(
        installService(deps(createFakeServiceManager()), opts({ unitDir: bad })),
        'ERR_SERVICE_FILE_FAILED',
        new RegExp(`^cannot (write units to|read the unit file) ${bad}.*\\(no such directory\\)$`),
      )
      assert.equal(await exists(envFile), false)
    }
  })

  test('settings either process would refuse', async () => {
    const manager = createFakeServiceManager()
    await rejects(
      installService(deps(manager, { INITLESS_SUBNET: 'everywhere', INITLESS_MAX_BODY: 'lots' }), opts()),
      'ERR_CONFIG_INVALID',
      /INITLESS_SUBNET: .*\n.*INITLESS_MAX_BODY: /,
    )
    assert.deepEqual(await files(), [])
    assert.equal(await exists(envFile), false)
  })

  test('a setting the env file cannot hold, even in a dry run', async () => {
    for (const dryRun of [false, true])
      await rejects(
        installService(
          deps(createFakeServiceManager(), { INITLESS_ADMIN_TOKEN: `${TOKEN}\nX=1` }),
          opts({ dryRun }),
        ),
        'ERR_CONFIG_INVALID',
        /INITLESS_ADMIN_TOKEN: a line break or NUL cannot be written/,
      )
    assert.equal(await exists(envFile), false)
  })

  test('an env file it would read differently from systemd or a shell', async () => {
    await mkdir(join(dir, 'etc'))
    await writeFile(envFile, 'INITLESS_ADMIN_TOKEN=two words\n')
    await rejects(
      installService(deps(createFakeServiceManager()), opts()),
      'ERR_CONFIG_INVALID',
      /initless\.env:1: INITLESS_ADMIN_TOKEN: write the value plain/,
    )
    assert.deepEqual(await files(), [])
  })

  test('a failing systemctl is reported with its message', async () => {
    await rejects(
      installService(deps(createFakeServiceManager({ failOn: 'enable' })), opts()),
      'ERR_COMMAND_FAILED',
      /systemctl enable .*Failed \(fake\)/s,
    )
  })
})

describe('service uninstall', () => {
  test('stops, disables and removes exactly the units it wrote, and keeps the env file', async () => {
    await installService(deps(createFakeServiceManager()), opts())
    const theirs = '[Service]\nExecStart=/usr/bin/redis-server\n'
    await writeFile(join(unitDir, 'initless-redis.service'), theirs)
    await writeFile(join(unitDir, 'other.service'), theirs)
    const manager = createFakeServiceManager()
    const result = await uninstallService({ manager }, { unitDir, envFile, purge: false, dryRun: false })
    assert.deepEqual(result.removed, ['initless-gateway.service', 'initless-executor.service'])
    assert.deepEqual(result.leftAlone, [join(unitDir, 'initless-redis.service')])
    assert.deepEqual(manager.calls, [
      'disable --now initless-gateway.service initless-executor.service',
      'daemon-reload',
    ])
    assert.deepEqual(await files(), ['initless-redis.service', 'other.service'])
    assert.equal(await unit('initless-redis.service'), theirs)
    assert.equal(await exists(envFile), true)
  })

  test('--purge removes the env file and its directory', async () => {
    await installService(deps(createFakeServiceManager()), opts())
    const result = await uninstallService(
      { manager: createFakeServiceManager() },
      { unitDir, envFile, purge: true, dryRun: false },
    )
    assert.equal(result.envFile.removed, true)
    assert.equal(await exists(join(dir, 'etc')), false)
    assert.deepEqual(await files(), [])
  })

  test('--dry-run says what it would remove and changes nothing', async () => {
    await installService(deps(createFakeServiceManager()), opts())
    const manager = createFakeServiceManager()
    const result = await uninstallService({ manager }, { unitDir, envFile, purge: true, dryRun: true })
    assert.deepEqual(result.removed, ['initless-gateway.service', 'initless-executor.service'])
    assert.equal(result.envFile.removed, true)
    assert.deepEqual(manager.calls, [])
    assert.equal((await files()).length, 2)
    assert.equal(await exists(envFile), true)
  })

  test('with nothing installed, nothing is called', async () => {
    const manager = createFakeServiceManager()
    const result = await uninstallService({ manager }, { unitDir, envFile, purge: false, dryRun: false })
    assert.deepEqual(result.removed, [])
    assert.deepEqual(manager.calls, [])
  })

  test('without systemd, it says so', async () => {
    await rejects(
      uninstallService(
        { manager: createFakeServiceManager({ booted: false }) },
        { unitDir, envFile, purge: false, dryRun: false },
      ),
      'ERR_SERVICE_NO_SYSTEMD',
      /no initless service to uninstall/,
    )
  })
})

test('the commands for hosts without systemd quote what a shell would split', () => {
  const text = withoutSystemd({
    root: "/opt/it's here",
    envFile: '/etc/initless/initless.env',
    executor: ['/usr/bin/node', "/opt/it's here/dist/executor/main.js"],
    gateway: ['/usr/bin/node', "/opt/it's here/dist/gateway/main.js"],
  })
  assert.match(text, /^ {2}cd '\/opt\/it'\\''s here'$/m)
  assert.match(text, /nohup \/usr\/bin\/node '\/opt\/it'\\''s here\/dist\/executor\/main\.js' >>/)
})
