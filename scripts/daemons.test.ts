import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

const exec = promisify(execFile)
const DAEMONS = join(import.meta.dirname, 'daemons.sh')
const PROVISION = join(import.meta.dirname, 'provision.sh')

/**
 * provision.sh's choice between systemd and background daemons, run for real in bash with fake
 * systemctl, dockerd, redis-server, pkill and pgrep first in PATH: each records its argv.
 */
describe('scripts/daemons.sh', () => {
  let dir = ''
  const calls = () => join(dir, 'calls.log')

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'initless-daemons-'))
    await mkdir(join(dir, 'bin'))
    await mkdir(join(dir, 'systemd-marker'))
    for (const name of ['systemctl', 'dockerd', 'redis-server', 'pkill', 'pgrep', 'setpriv']) {
      const file = join(dir, 'bin', name)
      // Every argument in brackets: an empty one ('') shows. pgrep finds nothing (dockerd stopped);
      // dockerd takes a moment, so a caller that waited for it records itself after it.
      await writeFile(
        file,
        `#!/bin/bash\n${name === 'dockerd' ? 'sleep 0.3\n' : ''}` +
          `{ printf '%s' ${name}; for a in "$@"; do printf ' [%s]' "$a"; done; echo; } >>"$CALLS"\n` +
          `if [ -e /proc/$$/fd/3 ]; then echo "${name} inherited fd 3" >>"$CALLS"; fi\n` +
          `echo "${name} output"\n${name === 'pgrep' ? 'exit 1\n' : ''}`,
      )
      await chmod(file, 0o755)
    }
  })
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  /** Run `script` after sourcing daemons.sh, with or without the systemd marker. */
  async function run(script: string, opts: { systemd: boolean }): Promise<string[]> {
    await rm(calls(), { force: true })
    await rm(join(dir, 'log'), { recursive: true, force: true })
    await mkdir(join(dir, 'log'))
    await exec('bash', ['-c', `set -Eeuo pipefail; . ${DAEMONS}; ${script}; wait`], {
      env: {
        PATH: `${join(dir, 'bin')}:${process.env.PATH}`,
        CALLS: calls(),
        STATE_DIR: join(dir, 'state'),
        LOG_DIR: join(dir, 'log'),
        INITLESS_SYSTEMD_MARKER: join(dir, opts.systemd ? 'systemd-marker' : 'no-such-dir'),
        INITLESS_SYSTEMD_DIR: join(dir, 'systemd'),
        INITLESS_REGISTRY_PIDFILE: join(dir, 'registry.pid'),
      },
    })
    return (await readFile(calls(), 'utf8').catch(() => '')).trimEnd().split('\n').filter(Boolean)
  }

  const ownRedis = (port: number) =>
    `redis-server [--port] [${port}] [--bind] [127.0.0.1] [--daemonize] [yes] [--dir] [${dir}/state/redis] ` +
    `[--logfile] [${dir}/log/redis.log] [--pidfile] [/run/initless-redis-${port}.pid] [--appendonly] [yes] [--save] []`

  test('with systemd: Docker and Redis on 6379 are enabled and started by systemctl', async () => {
    assert.deepEqual(await run('start_docker; start_redis 6379', { systemd: true }), [
      'systemctl [enable] [--now] [docker]',
      'systemctl [enable] [--now] [redis-server]',
    ])
  })

  test('with systemd: a Redis on another port is initless’s own, daemonized', async () => {
    assert.deepEqual(await run('start_redis 6380', { systemd: true }), [ownRedis(6380)])
  })

  test('with systemd: a restart of Docker goes through systemctl', async () => {
    assert.deepEqual(await run('restart_docker', { systemd: true }), ['systemctl [restart] [docker]'])
  })

  test('without systemd: dockerd runs in the background logging to LOG_DIR, redis-server daemonizes', async () => {
    assert.deepEqual(
      await run('start_docker; echo returned >>"$CALLS"; start_redis 6379', { systemd: false }),
      ['returned', ownRedis(6379), 'dockerd'],
    )
    assert.equal(await readFile(join(dir, 'log', 'dockerd.log'), 'utf8'), 'dockerd output\n')
  })

  test('without systemd: a restart of Docker stops dockerd and waits until it is gone', async () => {
    assert.deepEqual(await run('restart_docker', { systemd: false }), [
      'pkill [-x] [dockerd]',
      'pgrep [-x] [dockerd]',
    ])
  })

  test('with systemd: the registry is the package unit, pointed at initless’s config by a drop-in', async () => {
    assert.deepEqual(await run('start_registry /etc/initless/registry.yml', { systemd: true }), [
      'systemctl [daemon-reload]',
      'systemctl [enable] [docker-registry]',
      'systemctl [restart] [docker-registry]',
    ])
    assert.equal(
      await readFile(join(dir, 'systemd', 'docker-registry.service.d', 'initless.conf'), 'utf8'),
      '[Service]\nExecStart=\nExecStart=/usr/bin/docker-registry serve /etc/initless/registry.yml\n',
    )
  })

  test('without systemd: the registry runs in the background as docker-registry, logging to LOG_DIR', async () => {
    assert.deepEqual(await run('start_registry /etc/initless/registry.yml', { systemd: false }), [
      'setpriv [--reuid=docker-registry] [--regid=docker-registry] [--init-groups] [docker-registry] [serve] [/etc/initless/registry.yml]',
    ])
    assert.equal(await readFile(join(dir, 'log', 'registry.log'), 'utf8'), 'setpriv output\n')
    assert.match(await readFile(join(dir, 'registry.pid'), 'utf8'), /^\d+\n$/)
  })

  test('with systemd: the queue Redis is an instance of Debian’s redis-server@.service', async () => {
    assert.deepEqual(await run('start_queue_redis /etc/redis/redis-initless-queue.conf', { systemd: true }), [
      'systemctl [enable] [--now] [redis-server@initless-queue]',
    ])
  })

  test('without systemd: the queue Redis daemonizes from its config file, logging to LOG_DIR', async () => {
    assert.deepEqual(await run('start_queue_redis /x/queue.conf', { systemd: false }), [
      `redis-server [/x/queue.conf] [--daemonize] [yes] [--logfile] [${dir}/log/queue-redis.log] [--pidfile] [/run/initless-queue-redis.pid]`,
    ])
  })

  test('the queue Redis’s config: AOF fsynced before every reply; under systemd the journal', async () => {
    const conf = async (systemd: boolean) =>
      (
        await exec('bash', ['-c', `. ${DAEMONS}; queue_redis_conf 6381 /var/lib/redis/initless-queue`], {
          env: {
            PATH: process.env.PATH,
            INITLESS_SYSTEMD_MARKER: join(dir, systemd ? 'systemd-marker' : 'no-such-dir'),
          },
        })
      ).stdout
    const common = [
      'port 6381',
      'bind 127.0.0.1',
      'dir /var/lib/redis/initless-queue',
      'appendonly yes',
      'appendfsync always',
      'save ""',
    ]
    const settings = (text: string) => text.split('\n').filter((l) => l && !l.startsWith('#'))
    assert.deepEqual(settings(await conf(false)), common)
    assert.deepEqual(settings(await conf(true)), [
      ...common,
      'pidfile /run/redis-initless-queue/redis-server.pid',
      'logfile ""',
    ])
  })

  test('a daemon never inherits the caller’s descriptors (flock’s lock on fd 3)', async () => {
    const started = await run(
      'exec 3</dev/null; start_docker; start_redis 6390; start_queue_redis /x.conf; start_registry /r.yml',
      { systemd: false },
    )
    assert.equal(started.length, 4, started.join('\n'))
    assert.deepEqual(
      started.filter((l) => l.includes('inherited')),
      [],
    )
    // The fakes do see a descriptor that is passed on: the check itself works.
    assert.deepEqual(await run('exec 3</dev/null; redis-server x', { systemd: false }), [
      'redis-server [x]',
      'redis-server inherited fd 3',
    ])
  })

  test('provision.sh starts its daemons only through these functions', async () => {
    const text = await readFile(PROVISION, 'utf8')
    assert.match(text, /^\. "\$\(dirname "\$\{BASH_SOURCE\[0\]\}"\)\/daemons\.sh"$/m)
    const direct = text
      .split('\n')
      .filter((l) => /(?:^|[;&|(]|\bthen|\belse)\s*(?:systemctl|setsid|nohup|dockerd|redis-server)\s/.test(l))
    assert.deepEqual(direct, [], 'lines of provision.sh that start a daemon themselves')
  })
})
