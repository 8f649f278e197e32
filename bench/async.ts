/**
 * Asynchronous invocations benchmark: `node --import tsx bench/async.ts [--count 1000]
 * [--concurrency 50] [--rounds 3] [--out bench/results]` (and the quiet gate's options).
 *
 * Runs the real executor and gateway (cli/launcher.ts) on copies of the hello-node sample, with
 * the invocation queues on a redis-server of its own (AOF on, free port), and measures for
 * `appendfsync everysec` and `always` (switched with CONFIG SET between runs), each with one and
 * with four functions, every function scaled to zero first:
 * - accept rate: `count` invocations POSTed `concurrency` at a time, 202s per second;
 * - accept latency: p50 and p99 of each POST's time to its 202 (one AOF write and, with `always`,
 *   its fsync; `concurrency` in flight);
 * - drain rate: invocations finished per second, from the first 202 to the last finish;
 * - 202 -> start: how long the first invocation of the backlog waited until it was sent to an
 *   instance (its cold start included).
 * Writes `async-<date>.json` to the results folder and prints a table.
 */
import { spawn } from 'node:child_process'
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { freePort, isolatedStack, startStack, type Stack } from '../cli/launcher.ts'
import { packageRoot } from '../shared/package-root.ts'
import { createRedis } from '../shared/redis.ts'
import { benchEnvironment } from './env.ts'
import { passQuietGate, QUIET_ARGS } from './quiet.ts'

const { values: args } = parseArgs({
  options: {
    count: { type: 'string', default: '1000' },
    rounds: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '50' },
    out: { type: 'string', default: join(import.meta.dirname, 'results') },
    'state-dir': { type: 'string', default: '/var/lib/initless-bench-async' },
    ...QUIET_ARGS,
  },
})
const COUNT = Number(args.count)
const ROUNDS = Number(args.rounds)
const CONCURRENCY = Number(args.concurrency)
const FUNCTIONS = ['async-1', 'async-2', 'async-3', 'async-4']
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms))
const round2 = (x: number) => Math.round(x * 100) / 100
/** The nearest-rank percentile `q` (0-1) of `xs`. */
const percentile = (xs: readonly number[], q: number) =>
  [...xs].sort((a, b) => a - b)[Math.max(0, Math.ceil(q * xs.length) - 1)] ?? NaN

interface Run {
  readonly fsync: string
  readonly functions: number
  readonly count: number
  readonly acceptPerS: number
  readonly acceptP50Ms: number
  readonly acceptP99Ms: number
  readonly drainPerS: number
  readonly firstStartMs: number
  readonly round?: number
}

async function functionsDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'initless-bench-async-'))
  const sample = join(packageRoot(), 'functions', 'hello-node')
  for (const name of FUNCTIONS) {
    await cp(sample, join(dir, name), { recursive: true })
    const file = join(dir, name, 'function.yaml')
    const text = (await readFile(file, 'utf8')).replace(/^name: .*$/m, `name: ${name}`)
    await writeFile(file, `${text}async:\n  concurrency: 32\n  queueLimit: 1000000\n`)
  }
  return dir
}

async function post(url: string): Promise<{ id: string; acceptedAt: number; ms: number }> {
  for (;;) {
    const sent = performance.now()
    const res = await fetch(url, { method: 'POST' })
    if (res.status === 202) {
      const ms = performance.now() - sent
      return { id: ((await res.json()) as { id: string }).id, acceptedAt: Date.now(), ms }
    }
    await res.arrayBuffer()
    await delay(100)
  }
}

async function runOnce(stack: Stack, fns: readonly string[], fsync: string): Promise<Run> {
  for (const fn of fns) {
    await stack.admin('POST', `/functions/${fn}/scale`, { instances: 0 })
    await stack.waitForInstances(fn, (l) => l.length === 0, 60_000)
  }
  let next = 0
  let first: { id: string; acceptedAt: number } | undefined
  const ids: string[] = []
  const latencies: number[] = []
  const started = Date.now()
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < COUNT) {
        const i = next++
        const fn = fns[i % fns.length]!
        const r = await post(`${stack.url}/async-function/${fn}/`)
        if (i === 0) first = r
        ids.push(r.id)
        latencies.push(r.ms)
      }
    }),
  )
  const acceptMs = Date.now() - started
  // Drained when no function has anything queued or running and every id finished.
  let lastFinish = 0
  for (let i = 0; i < ids.length;) {
    const res = await fetch(`${stack.url}/invocations/${ids[i]}`)
    const v = (await res.json()) as { state: string; finishedAt?: number }
    if (['succeeded', 'failed', 'dead'].includes(v.state)) {
      lastFinish = Math.max(lastFinish, v.finishedAt ?? 0)
      i++
    } else await delay(100)
  }
  const firstView = (await (await fetch(`${stack.url}/invocations/${first!.id}`)).json()) as {
    acceptedAt: number
    attempts: { startedAt: number; sentAt?: number }[]
  }
  return {
    fsync,
    functions: fns.length,
    count: COUNT,
    acceptPerS: Math.round((COUNT / acceptMs) * 1000),
    acceptP50Ms: round2(percentile(latencies, 0.5)),
    acceptP99Ms: round2(percentile(latencies, 0.99)),
    drainPerS: Math.round((COUNT / (lastFinish - started)) * 1000),
    firstStartMs: (firstView.attempts[0]?.sentAt ?? NaN) - firstView.acceptedAt,
  }
}

// Before anything of the benchmark's own starts: its executor and gateway would count as busy.
const quiet = await passQuietGate('bench/async', args)
const env = {
  ...benchEnvironment(['node --import tsx bench/async.ts', ...process.argv.slice(2)]),
  quiet,
}
const redisPort = await freePort()
const redisDir = await mkdtemp(join(tmpdir(), 'initless-bench-redis-'))
const redis = spawn(
  'redis-server',
  [
    '--port',
    String(redisPort),
    '--bind',
    '127.0.0.1',
    '--dir',
    redisDir,
    '--save',
    '',
    '--appendonly',
    'yes',
  ],
  { stdio: 'ignore' },
)
const redisUrl = `redis://127.0.0.1:${redisPort}`
const control = createRedis(redisUrl, { name: 'bench-async-control' })
control.on('error', () => undefined) // until redis-server listens; commands wait for it meanwhile
await control.ping()
const dir = await functionsDir()
const iso = await isolatedStack('bench-async', 'redis://127.0.0.1:6379')
await mkdir(args['state-dir'], { recursive: true, mode: 0o700 })
let stack: Stack | undefined
const runs: Run[] = []
try {
  stack = await startStack({
    env: {
      ...iso.env,
      INITLESS_STATE_DIR: args['state-dir'],
      INITLESS_FUNCTIONS_DIR: dir,
      INITLESS_ASYNC_REDIS_URL: redisUrl,
      // info: startStack waits for the executor's 'functions prepared' line.
      INITLESS_LOG_LEVEL: 'info',
    },
    adminToken: iso.adminToken,
    prepareTimeoutMs: 900_000,
    // Ctrl-C or SIGTERM still stops the processes (the executor then stops every instance).
    defer: (stop) => {
      for (const signal of ['SIGINT', 'SIGTERM'] as const)
        process.once(
          signal,
          () =>
            void stop().finally(() => {
              redis.kill('SIGKILL')
              process.exit(130)
            }),
        )
    },
    cleanup: { redisUrl: 'redis://127.0.0.1:6379', patterns: iso.redisKeys },
  })
  // Rounds alternate the order of the two settings, so that warming up (JIT, page cache, the
  // first cold starts) does not land on one setting; the table shows each cell's median.
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 ? ['always', 'everysec'] : ['everysec', 'always']
    for (const fsync of order) {
      await control.config('SET', 'appendfsync', fsync)
      for (const n of [1, 4]) {
        const r = { ...(await runOnce(stack, FUNCTIONS.slice(0, n), fsync)), round }
        console.log(JSON.stringify(r))
        runs.push(r)
      }
    }
  }
} finally {
  await stack?.stop()
  control.disconnect()
  redis.kill('SIGKILL')
  await rm(dir, { recursive: true, force: true })
  await rm(redisDir, { recursive: true, force: true })
}
const file = join(args.out, `async-${new Date().toISOString().replace(/[:.]/g, '-')}.json`)
await writeFile(file, JSON.stringify({ env, count: COUNT, concurrency: CONCURRENCY, runs }, null, 2))
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)] ?? NaN
console.log(
  `\n| appendfsync | functions | accepted/s | 202 p50 (ms) | 202 p99 (ms) | drained/s | 202 -> start of the first (ms) |`,
)
console.log(`| --- | --- | --- | --- | --- | --- | --- |`)
for (const fsync of ['everysec', 'always'])
  for (const n of [1, 4]) {
    const cell = runs.filter((r) => r.fsync === fsync && r.functions === n)
    const m = (k: 'acceptPerS' | 'acceptP50Ms' | 'acceptP99Ms' | 'drainPerS' | 'firstStartMs') =>
      median(cell.map((r) => r[k]))
    console.log(
      `| ${fsync} | ${n} | ${m('acceptPerS')} | ${m('acceptP50Ms')} | ${m('acceptP99Ms')} | ${m('drainPerS')} | ${m('firstStartMs')} |`,
    )
  }
console.log(`(medians of ${ROUNDS} rounds; load at start ${env.machine.loadAvg1m})`)
console.log(`\nwritten to ${file}`)
