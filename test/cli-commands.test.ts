import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { startCliUp, type CliUp } from './support/cli-up.ts'
import { isCI, requireServices } from './support/integration.ts'
import { hostResources, NO_LEAKS } from './support/leaks.ts'

const exec = promisify(execFile)
const ROOT = join(import.meta.dirname, '..')
const CLI = join(ROOT, 'bin', 'initless.mjs')

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as { port: number }).port
  await new Promise((r) => server.close(r))
  return port
}

/** Every CLI command, run for real against a stack brought up by `initless up`. */
describe('initless CLI commands', () => {
  const tag = randomBytes(4).toString('hex')
  let functionsDir = ''
  let env: NodeJS.ProcessEnv = {}
  let up: CliUp | undefined

  async function cli(
    args: string[],
    expectCode = 0,
  ): Promise<{ stdout: string; stderr: string; code: number }> {
    const res = await exec(process.execPath, [CLI, ...args], {
      env,
      cwd: ROOT,
      timeout: 300_000,
      maxBuffer: 16 << 20,
    }).then(
      (r) => ({ ...r, code: 0 }),
      (e: { stdout: string; stderr: string; code: number }) => ({
        stdout: e.stdout,
        stderr: e.stderr,
        code: e.code,
      }),
    )
    assert.equal(
      res.code,
      expectCode,
      `initless ${args.join(' ')} exited ${res.code}\n${res.stderr}\n${res.stdout}`,
    )
    return res
  }

  before(async () => {
    if (process.getuid?.() !== 0 && !isCI) return
    functionsDir = await mkdtemp(join(tmpdir(), 'initless-cli-fns-'))
    await cp(join(ROOT, 'functions', 'hello-node'), join(functionsDir, 'hello-node'), { recursive: true })
    env = {
      ...process.env,
      INITLESS_FUNCTIONS_DIR: functionsDir,
      INITLESS_QUEUE_NAME: `test-${randomUUID()}`,
      INITLESS_KEY_PREFIX: `test-cli-${tag}`,
      INITLESS_HOST_ID: `cli-${tag}`,
      INITLESS_GATEWAY_PORT: String(await freePort()),
      INITLESS_LOG_LEVEL: 'warn',
    }
  })
  after(async () => {
    // Its own process group: a failed test must not leave the executor and gateway running.
    up?.killGroup()
    if (functionsDir) await rm(functionsDir, { recursive: true, force: true })
  })

  test('build, bake and functions', async (t) => {
    if (!requireServices(t)) return
    const build = JSON.parse((await cli(['--json', 'build', 'hello-node'])).stdout) as {
      fn: string
      tag: string
    }[]
    assert.equal(build[0]?.fn, 'hello-node')
    assert.match(build[0].tag, /^initless\/fn-hello-node:[0-9a-f]{16}$/)
    const bake = JSON.parse((await cli(['--json', 'bake', 'hello-node'])).stdout) as {
      fn: string
      sizeBytes: number
    }[]
    assert.equal(bake[0]?.fn, 'hello-node')
    assert.ok(bake[0].sizeBytes > 1_000_000)
    const list = JSON.parse((await cli(['--json', 'functions'])).stdout) as {
      name: string
      state: string
      image: string
    }[]
    assert.deepEqual(
      list.map((f) => [f.name, f.state, f.image]),
      [['hello-node', 'ready', build[0].tag]],
    )
    const text = (await cli(['functions'])).stdout
    assert.match(text, /^NAME\s+STATE\s+POLICY\s+SNAPSHOT\s+AGE\s+IMAGE$/m)
    assert.match(text, /^hello-node\s+ready\s+auto\s+\d+ MiB/m)
    // An unknown function is a clear error, exit code 1.
    const bad = await cli(['bake', 'no-such-fn'], 1)
    assert.match(bad.stderr, /unknown function 'no-such-fn' \(known: hello-node\)/)
  })

  test('up, invoke, logs, scale, then Ctrl-C stops everything', async (t) => {
    if (!requireServices(t)) return
    up = await startCliUp(env)

    // A second `up` on the same state dir stops before building anything: the executor holds it.
    const second = await cli(['up'], 1)
    assert.match(
      second.stderr,
      /^initless: state dir \S+ is in use by another executor \(pid \d+, host id cli-/m,
    )
    // `up` reports each function it deployed as one line: version, what happened, build and bake.
    const deployed = /^hello-node +[0-9a-f]{12} +(deployed \(was none\)|unchanged|kept version activated)/m
    assert.match(up.output(), deployed)
    assert.doesNotMatch(second.stderr + second.stdout, /^hello-node +[0-9a-f]{12}/m)

    const cold = JSON.parse((await cli(['--json', 'invoke', 'hello-node', '/'])).stdout) as {
      status: number
      body: string
      serverTiming: { name: string }[]
    }
    assert.equal(cold.status, 200)
    assert.equal(JSON.parse(cold.body).message, 'hello from node')
    assert.ok(
      cold.serverTiming.some((p) => p.name === 'restore'),
      'a cold start reports its phases',
    )
    const warm = (await cli(['invoke', 'hello-node', '/echo', '-d', 'ping'])).stdout
    assert.match(warm, /^HTTP 200 in \d+ ms\nphases: warm/)
    assert.match(warm, /\n\nping\n$/)
    const missing = await cli(['invoke', 'nope'], 1)
    assert.match(missing.stdout, /HTTP 404/)

    // The executor of `up` is the one host: live, its subnet claimed, nothing to route to.
    const hosts = JSON.parse((await cli(['--json', 'hosts'])).stdout) as {
      hosts: { hostId: string; state: string; subnet?: string; address?: string; functions: string[] }[]
      routes: unknown[]
    }
    assert.deepEqual(
      hosts.hosts.map((h) => [h.hostId, h.state, h.subnet, h.address, h.functions]),
      [[`cli-${tag}`, 'live', '10.213.0.0/16', undefined, ['hello-node']]],
    )
    assert.deepEqual(hosts.routes, [])
    const hostsText = (await cli(['hosts'])).stdout
    assert.match(
      hostsText,
      new RegExp(`^cli-${tag} \\(this host\\) +live +\\d+s +10\\.213\\.0\\.0/16 +- +1$`, 'm'),
    )
    assert.match(hostsText, /no host advertises an address: nothing to route/)
    const logs = JSON.parse((await cli(['--json', 'logs', 'hello-node'])).stdout) as {
      instance: string
      output: string
    }[]
    assert.equal(logs.length, 1, 'one instance of hello-node runs on this host')

    const scaled = (await cli(['scale', 'hello-node', '0'])).stdout
    assert.match(scaled, /hello-node: scale to zero requested/)
    const gone = Date.now() + 10_000
    while ((JSON.parse((await cli(['--json', 'logs', 'hello-node'])).stdout) as unknown[]).length > 0) {
      assert.ok(Date.now() < gone, 'scale to zero stopped the instance')
      await new Promise((r) => setTimeout(r, 200))
    }
    const prewarm = JSON.parse((await cli(['--json', 'scale', 'hello-node', '2'])).stdout) as {
      prewarming: string[]
    }
    assert.equal(prewarm.prewarming.length, 2)
    // Bad usage exits 2.
    assert.match((await cli(['scale', 'hello-node', 'many'], 2)).stderr, /instances must be a whole number/)
    // Scaled by the function registry's record, not a folder: an unknown name says what is deployed.
    assert.match(
      (await cli(['scale', 'no-such-fn', '0'], 1)).stderr,
      /no deployed function 'no-such-fn' \(deployed: hello-node\)/,
    )

    const exited = new Promise<number | null>((r) => up!.child.once('exit', (code) => r(code)))
    up.child.kill('SIGINT')
    assert.equal(await exited, 0, up.output().slice(-2000))
    assert.deepEqual(
      hostResources({ runcRoot: '/run/initless/runc', stateDir: '/var/lib/initless' }),
      NO_LEAKS,
    )
  })

  test('bench: a minimal real run writes latest.json, the table and the chart', async (t) => {
    if (!requireServices(t)) return
    const out = await mkdtemp(join(tmpdir(), 'initless-bench-'))
    after(() => rm(out, { recursive: true, force: true }))
    await cli([
      'bench',
      '--n',
      '1',
      '--functions',
      'hello-node',
      '--runtimes',
      'boot,eager',
      '--only',
      'cold,warm',
      '--warm-connections',
      '1',
      '--warm-duration',
      '1',
      '--warmup',
      '1',
      // CI machines are busy (this suite runs stacks of its own): measure anyway, marked as such.
      '--allow-busy',
      '--quiet-wait',
      '0',
      '--out',
      out,
      // Its own snapshots and unpacked images: the default bench state dir is the operator's.
      '--state-dir',
      join(out, 'state'),
    ])
    const latest = JSON.parse(await readFile(join(out, 'latest.json'), 'utf8')) as {
      date: string
      command: string
      coldStart: { function: string; runtime: string; n: number; p50Ms: number; ratioToBoot: number }[]
      warm: { target: string; connections: number; rps: number }[]
      quiet: { comparable: boolean; load1m: number; maxLoad: number; busy: string[] }
    }
    assert.match(latest.command, /bench/)
    assert.equal(latest.quiet.maxLoad, 0.5)
    assert.equal(latest.quiet.comparable, latest.quiet.load1m <= 0.5 && latest.quiet.busy.length === 0)
    assert.deepEqual(
      latest.coldStart.map((r) => [r.function, r.runtime.split(' ')[0], r.n]),
      [
        ['hello-node', 'boot', 1],
        ['hello-node', 'eager', 1],
      ],
    )
    assert.ok(latest.coldStart.every((r) => r.p50Ms > 0))
    assert.deepEqual(latest.warm.map((w) => w.target).sort(), ['direct', 'gateway', 'nginx'])
    assert.ok(latest.warm.every((w) => w.rps > 0))
    assert.match(await readFile(join(out, 'latest.md'), 'utf8'), /\| hello-node \| eager/)
    assert.match(await readFile(join(out, 'latest.svg'), 'utf8'), /^<svg/)
  })
})
