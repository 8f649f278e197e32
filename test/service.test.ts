/**
 * What `initless service` produces, run for real as far as a host without systemd allows: the
 * gateway under its unit's capability restrictions (applied with setpriv, as systemd would), and
 * the commands printed for hosts without systemd, executed by sh, starting and stopping a real
 * executor and gateway on the shared Redis (unique queue, key prefix and host id).
 */
import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { parseEnvFile, renderEnvFile, type Settings } from '../cli/service/env-file.ts'
import { withoutSystemd } from '../cli/service/install.ts'
import { planService, renderUnits, type ServicePlan } from '../cli/service/units.ts'
import { createRedis, deleteKeys } from '../shared/redis.ts'
import { freePort } from './support/e2e.ts'
import { REDIS_URL, requireServices } from './support/integration.ts'

const exec = promisify(execFile)
const ROOT = join(import.meta.dirname, '..')

/** Poll `url` until it answers 200; fail with `context()` after `ms`. */
async function until200(url: string, ms: number, context: () => Promise<string>): Promise<void> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (
      await fetch(url).then(
        (r) => r.ok,
        () => false,
      )
    )
      return
    await new Promise((r) => setTimeout(r, 250))
  }
  assert.fail(`${url} did not answer 200 within ${ms} ms\n${await context()}`)
}

/** Running (a zombie nobody reaped yet counts as gone): its state in /proc/<pid>/stat. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

/** One `Key=value` of a unit's text. */
function unitValue(text: string, key: string): string {
  const line = text.split('\n').find((l) => l.startsWith(`${key}=`))
  assert.ok(line, `${key} missing from the unit`)
  return line.slice(key.length + 1)
}

describe('initless service, run for real without systemd', () => {
  const tag = randomBytes(4).toString('hex')
  const prefix = `test-svc-${tag}`
  const queueName = `test-${randomUUID()}`
  let dir = ''
  let settings: Settings = {}
  let plan: ServicePlan | undefined
  const pids: number[] = []
  const children: ChildProcess[] = []

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'initless-svc-'))
    await mkdir(join(dir, 'functions'))
    settings = {
      INITLESS_REDIS_URL: REDIS_URL,
      INITLESS_STATE_DIR: join(dir, 'state'),
      INITLESS_RUNC_ROOT: join(dir, 'runc'),
      INITLESS_FUNCTIONS_DIR: join(dir, 'functions'),
      INITLESS_HOST_ID: `svc-${tag}`,
      INITLESS_KEY_PREFIX: prefix,
      INITLESS_QUEUE_NAME: queueName,
      INITLESS_GATEWAY_PORT: String(await freePort()),
      INITLESS_SHUTDOWN_TIMEOUT: '5s',
      INITLESS_ADMIN_TOKEN: `token-${tag}-0123456789`,
    }
    await writeFile(join(dir, 'initless.env'), renderEnvFile(settings), { mode: 0o600 })
    plan = planService({
      settings,
      root: ROOT,
      node: process.execPath,
      envFile: join(dir, 'initless.env'),
      redisServer: '/usr/bin/redis-server',
      manageRedis: true,
      exists: existsSync,
    })
  })

  after(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL')
    const redis = createRedis(REDIS_URL)
    await deleteKeys(redis, [`${prefix}:*`, `bull:${queueName}:*`]).finally(() => redis.disconnect())
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  test("the gateway serves with only its unit's capabilities and no new privileges", async (t) => {
    if (!requireServices(t)) return
    const gateway = renderUnits(plan!).find((u) => u.name === 'initless-gateway.service')!.text
    const caps = unitValue(gateway, 'CapabilityBoundingSet').split(' ')
    assert.equal(unitValue(gateway, 'NoNewPrivileges'), 'yes')
    const bounding = ['-all', ...caps.map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`)].join(',')
    // As systemd starts it: the env file's settings, PATH from the unit, from WorkingDirectory.
    const env = {
      ...parseEnvFile(await readFile(join(dir, 'initless.env'), 'utf8'), 'initless.env'),
      PATH: unitValue(gateway, 'Environment').replace(/^PATH=/, ''),
    }
    const child = spawn('setpriv', ['--bounding-set', bounding, '--no-new-privs', '--', ...plan!.gateway], {
      cwd: unitValue(gateway, 'WorkingDirectory'),
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    children.push(child)
    let output = ''
    child.stdout.on('data', (d: Buffer) => (output += d.toString()))
    child.stderr.on('data', (d: Buffer) => (output += d.toString()))
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)))

    await until200(`http://127.0.0.1:${settings.INITLESS_GATEWAY_PORT}/healthz`, 60_000, async () => output)
    const status = await readFile(`/proc/${child.pid}/status`, 'utf8')
    const field = (name: string) => status.match(new RegExp(`^${name}:\\s+(\\S+)$`, 'm'))?.[1]
    // CAP_DAC_READ_SEARCH is capability 2.
    assert.deepEqual(caps, ['CAP_DAC_READ_SEARCH'])
    assert.equal(field('CapBnd'), '0000000000000004')
    assert.equal(field('CapEff'), '0000000000000004')
    assert.equal(field('NoNewPrivs'), '1')

    child.kill('SIGTERM')
    const code = await Promise.race([
      exited,
      new Promise<'late'>((r) => setTimeout(() => r('late'), plan!.gatewayStopSec * 1000)),
    ])
    assert.equal(code, 0, `the gateway's exit after SIGTERM\n${output.slice(-2000)}`)
  })

  test('the commands printed for hosts without systemd start both processes and stop them', async (t) => {
    if (!requireServices(t)) return
    const dirs = { log: join(dir, 'log'), run: join(dir, 'run') }
    const text = withoutSystemd(plan!, dirs).split('\n')
    const start = text.slice(
      text.findIndex((l) => l.startsWith('  cd ')),
      text.findIndex((l) => l.startsWith('Stop')),
    )
    const stop = text.at(-1)!
    assert.equal(start.length, 5, text.join('\n'))
    // Debian's sh (dash), with nothing in its environment but PATH: the settings come from the file.
    await exec('sh', ['-c', start.join('\n')], { env: { PATH: process.env.PATH } })
    const pid = async (name: string) => Number(await readFile(join(dirs.run, `${name}.pid`), 'utf8'))
    const [executor, gateway] = [await pid('executor'), await pid('gateway')]
    pids.push(executor, gateway)
    const logs = async () =>
      `--- executor\n${await readFile(join(dirs.log, 'executor.log'), 'utf8').catch(() => '')}\n` +
      `--- gateway\n${await readFile(join(dirs.log, 'gateway.log'), 'utf8').catch(() => '')}`

    // Ready: the gateway reaches Redis and hears this executor's heartbeat (same prefix).
    await until200(`http://127.0.0.1:${settings.INITLESS_GATEWAY_PORT}/readyz`, 120_000, logs)
    const environ = (await readFile(`/proc/${executor}/environ`, 'utf8')).split('\0')
    assert.ok(environ.includes(`INITLESS_HOST_ID=svc-${tag}`))
    assert.equal((await readFile(`/proc/${executor}/cmdline`, 'utf8')).split('\0')[0], process.execPath)

    await exec('sh', ['-c', stop.trim()], { env: { PATH: process.env.PATH }, timeout: 60_000 })
    const deadline = Date.now() + plan!.executorStopSec * 1000
    while (alive(executor) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200))
    assert.equal(alive(gateway), false, 'the gateway is stopped first, and waited for')
    assert.equal(alive(executor), false, `the executor did not stop\n${await logs()}`)
    assert.match(await readFile(join(dirs.log, 'executor.log'), 'utf8'), /"msg":"stopped"/)
  })
})
