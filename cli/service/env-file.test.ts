import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { promisify } from 'node:util'
import { isInitlessError } from '../../shared/errors.ts'
import { parseEnvFile, pickSettings, redactSettings, renderEnvFile, SETTING_KEYS } from './env-file.ts'

const exec = promisify(execFile)

/** Values a shell or systemd could misread if written carelessly. */
const TRICKY = {
  INITLESS_ADMIN_TOKEN: `a"b\\c$HOME\`id\` 'q' #x %n ;&|`,
  INITLESS_FUNCTIONS_DIR: '/srv/my functions',
  INITLESS_REDIS_URL: 'redis://:p%40ss@127.0.0.1:6380/2',
  INITLESS_LOG_LEVEL: 'debug',
}

describe('pickSettings', () => {
  test('takes the set settings of both processes, resolves relative paths, names the rest', () => {
    const { settings, ignored } = pickSettings(
      {
        INITLESS_REDIS_URL: 'redis://127.0.0.1:6380',
        INITLESS_GATEWAY_PORT: '9090',
        INITLESS_LOG_LEVEL: '',
        INITLESS_FUNCTIONS_DIR: 'fns',
        INITLESS_CRIU: 'criu',
        INITLESS_RUNC: 'bin/runc',
        INITLESS_GATEWAY_URL: 'http://127.0.0.1:9090',
        INITLESS_REDIS_PORT: '6380',
        PATH: '/usr/bin',
      },
      '/home/me/initless',
    )
    assert.deepEqual(settings, {
      INITLESS_CRIU: 'criu',
      INITLESS_FUNCTIONS_DIR: '/home/me/initless/fns',
      INITLESS_GATEWAY_PORT: '9090',
      INITLESS_REDIS_URL: 'redis://127.0.0.1:6380',
      INITLESS_RUNC: '/home/me/initless/bin/runc',
    })
    assert.deepEqual(ignored, ['INITLESS_GATEWAY_URL', 'INITLESS_REDIS_PORT'])
  })

  test('knows the keys of the executor and of the gateway', () => {
    for (const key of [
      'INITLESS_SUBNET',
      'INITLESS_ADMIN_TOKEN',
      'INITLESS_SHUTDOWN_TIMEOUT',
      'INITLESS_REDIS_URL',
    ])
      assert.ok(SETTING_KEYS.includes(key), key)
    assert.equal(new Set(SETTING_KEYS).size, SETTING_KEYS.length)
  })
})

describe('the env file', () => {
  test('reads back the values it was written with', () => {
    const text = renderEnvFile(TRICKY)
    assert.match(text, /^# initless settings/)
    assert.deepEqual(parseEnvFile(text, 'initless.env'), TRICKY)
  })

  test('means the same values to a shell that sources it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'initless-envfile-'))
    try {
      const file = join(dir, 'initless.env')
      await writeFile(file, renderEnvFile(TRICKY))
      // Debian's sh is dash: no bash extensions to lean on.
      const { stdout } = await exec('sh', ['-c', `set -a; . '${file}'; exec env -0`], { env: {} })
      const seen = Object.fromEntries(
        stdout
          .split('\0')
          .filter((kv) => kv.startsWith('INITLESS_'))
          .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
      )
      assert.deepEqual(seen, TRICKY)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  test('refuses a value with a line break, naming the key', () => {
    assert.throws(
      () => renderEnvFile({ INITLESS_ADMIN_TOKEN: 'abc\ndef-0123456789' }),
      (err) =>
        isInitlessError(err, 'ERR_CONFIG_INVALID') && /INITLESS_ADMIN_TOKEN: a line break/.test(err.message),
    )
  })

  test('accepts the forms people write by hand', () => {
    const text = [
      '# comment',
      '',
      'INITLESS_SUBNET=10.214.0.0/16',
      "export INITLESS_HOST_ID='host a'",
      'INITLESS_LOG_LEVEL="warn"',
      '  INITLESS_BRIDGE=initless1  ',
      'INITLESS_RUNC_ROOT=',
    ].join('\n')
    assert.deepEqual(parseEnvFile(text, 'f'), {
      INITLESS_SUBNET: '10.214.0.0/16',
      INITLESS_HOST_ID: 'host a',
      INITLESS_LOG_LEVEL: 'warn',
      INITLESS_BRIDGE: 'initless1',
      INITLESS_RUNC_ROOT: '',
    })
  })

  test('reports every line a shell and systemd would read differently, without echoing values', () => {
    const text = [
      'INITLESS_ADMIN_TOKEN=secret value',
      'INITLESS_REDIS_URL="redis://$HOST:6379"',
      'INITLESS_FUNCTIONS_DIR=~/fns',
      'not a setting',
      'INITLESS_LOG_LEVEL=info',
    ].join('\n')
    assert.throws(
      () => parseEnvFile(text, '/etc/initless/initless.env'),
      (err) => {
        assert.ok(isInitlessError(err, 'ERR_CONFIG_INVALID'))
        assert.deepEqual(
          err.message.split('\n').map((l) => l.split(': ')[0]!.trim()),
          [
            'invalid configuration:',
            '/etc/initless/initless.env:1',
            '/etc/initless/initless.env:2',
            '/etc/initless/initless.env:3',
            '/etc/initless/initless.env:4',
          ],
        )
        assert.match(err.message, /:1: INITLESS_ADMIN_TOKEN: write the value plain/)
        assert.doesNotMatch(err.message, /secret|\$HOST/)
        return true
      },
    )
  })
})

test('redactSettings hides the admin token and a Redis password, nothing else', () => {
  assert.deepEqual(redactSettings(TRICKY), {
    ...TRICKY,
    INITLESS_ADMIN_TOKEN: '<redacted>',
    INITLESS_REDIS_URL: 'redis://:redacted@127.0.0.1:6380/2',
  })
  assert.deepEqual(redactSettings({ INITLESS_REDIS_URL: 'redis://127.0.0.1:6379' }), {
    INITLESS_REDIS_URL: 'redis://127.0.0.1:6379',
  })
})
