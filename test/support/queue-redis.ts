/**
 * A redis-server of a test's own on a free port, configured exactly as scripts/provision.sh
 * configures the queue Redis (`queue_redis_conf` of scripts/daemons.sh, as on a host without
 * systemd): tests that kill it or read its keys exercise provisioning's configuration, never the
 * shared Redis on 6379.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { freePort } from '../../cli/launcher.ts'
import { createRedis } from '../../shared/redis.ts'

const exec = promisify(execFile)
const DAEMONS = join(import.meta.dirname, '..', '..', 'scripts', 'daemons.sh')

export interface TestRedis {
  readonly port: number
  readonly url: string
  /** The configuration file it runs from. */
  readonly conf: string
  /** SIGKILL (no shutdown, no final fsync), then wait for the exit. */
  kill(): Promise<void>
  /** Start it again on the same port, directory and AOF; resolves once it answers. */
  restart(): Promise<void>
}

/** provision.sh's queue Redis configuration for `port` and data dir `dir`. */
export async function queueRedisConf(port: number, dir: string): Promise<string> {
  const { stdout } = await exec('bash', ['-c', `. "${DAEMONS}"; queue_redis_conf ${port} "${dir}"`], {
    // Never the systemd variant: it would log to the journal and expect systemd's pid file dir.
    env: { PATH: process.env.PATH, INITLESS_SYSTEMD_MARKER: '/nonexistent' },
  })
  return stdout
}

/**
 * Start provisioning's queue Redis in `dir` (its data, its configuration file); `override` is
 * appended to the command line (`['--appendfsync', 'everysec']` makes the Redis a queue must not
 * run on). Resolves once it answers PING.
 */
export async function startQueueRedis(dir: string, override: readonly string[] = []): Promise<TestRedis> {
  const port = await freePort()
  const conf = join(dir, 'queue-redis.conf')
  await writeFile(conf, await queueRedisConf(port, dir))
  const url = `redis://127.0.0.1:${port}`
  let child: ChildProcess | undefined
  const start = async () => {
    child = spawn('redis-server', [conf, ...override], { stdio: 'ignore' })
    child.on('error', () => undefined)
    await waitRedis(url)
  }
  await start()
  return {
    port,
    url,
    conf,
    async kill() {
      const c = child
      if (!c || c.exitCode !== null || c.signalCode !== null) return
      const exited = once(c, 'exit')
      c.kill('SIGKILL')
      await exited
    },
    restart: start,
  }
}

/** Resolves once the Redis at `url` answers PING (15 s at most). */
export async function waitRedis(url: string): Promise<void> {
  const client = createRedis(url, { name: 'test-redis-ping' })
  client.on('error', () => undefined)
  try {
    const deadline = Date.now() + 15_000
    while ((await client.ping().catch(() => '')) !== 'PONG') {
      if (Date.now() > deadline) throw new Error(`redis at ${url} did not start`)
      await new Promise((r) => setTimeout(r, 50))
    }
  } finally {
    client.disconnect()
  }
}
