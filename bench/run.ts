/**
 * The benchmark (issue 6), end to end through the real gateway and executor processes:
 *   1. cold-start matrix: every sample x every runtime, request -> first byte, no instance running;
 *   2. burst from zero: many concurrent requests to a function with no instance;
 *   3. warm path: gateway vs a direct connection vs nginx, under autocannon.
 * Writes bench/results/<date>.json, latest.json, latest.md and latest.svg.
 *
 *   node --import tsx bench/run.ts [options]      (or: npx initless bench [options])
 *
 * Composition root of the benchmark: reads argv and the environment, installs the signal handlers
 * and owns every cleanup (gateway, executor and their instances, nginx), failure or not.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { loadExecutorConfig } from '../executor/config.ts'
import { chooseRuntime } from '../executor/runtimes/runtimes.ts'
import { createSnapshotStore } from '../executor/snapshots/snapshot-store.ts'
import type { RuntimeKind } from '../shared/contracts.ts'
import { loadFunctionDefs } from '../shared/functions.ts'
import { runBurst } from './burst.ts'
import { renderChart } from './chart.ts'
import { coldRun, runColdStartMatrix, VARIANTS, type ColdStartRow, type Variant } from './cold-start.ts'
import { benchEnvironment, percentile, round } from './env.ts'
import { passQuietGate, QUIET_ARGS, QUIET_USAGE } from './quiet.ts'
import { evaluateTargets, renderMarkdown, type BenchResult, type BurstRow } from './report.ts'
import { SAMPLE_REQUESTS } from './samples.ts'
import { startBenchStack, type BenchStack } from './stack.ts'
import { runWarmPath, type WarmResult } from './warm.ts'

const USAGE = `Usage: node --import tsx bench/run.ts [options]   (or: npx initless bench [options])

  --n <count>                 cold starts per function and runtime (default 10)
  --functions <a,b>           cold-start matrix functions (default: all four samples)
  --runtimes <a,b>            of ${VARIANTS.join(',')} (default: all)
  --only <a,b>                sections to run, of cold,burst,warm (default: all)
  --burst-fn <fn>             burst target (default spring-greeting)
  --burst <a,b>               concurrent requests of each burst, one burst per count (default 200,1000)
  --warm-fn <fn>              warm-path target (default hello-node)
  --warm-connections <a,b>    autocannon connections (default 1,64)
  --warm-duration <s>         seconds per warm-path run (default 5)
  --warm-rounds <count>       runs per warm-path target, targets interleaved (default 3)
  --warmup <s>                untimed seconds before each warm-path run (default 2)
  --gateway-workers <count>   gateway processes (INITLESS_GATEWAY_WORKERS, default 1)
  --nginx-workers <count>     nginx worker processes (default: as many as gateway processes)
  --settle <ms>               pause before each cold request once nothing runs (default 500)
  --state-dir <dir>           the benchmark executor's state dir (default /var/lib/initless-bench)
  --prepare-timeout <s>       build + bake deadline at start (default 1800)
  --out <dir>                 results folder (default bench/results)
${QUIET_USAGE}

Needs root, Docker, runc, CRIU, Redis and nginx (scripts/provision.sh). Run it on a quiet machine.
`

const { values: args } = parseArgs({
  options: {
    n: { type: 'string', default: '10' },
    functions: { type: 'string', default: Object.keys(SAMPLE_REQUESTS).join(',') },
    runtimes: { type: 'string', default: VARIANTS.join(',') },
    only: { type: 'string', default: 'cold,burst,warm' },
    'burst-fn': { type: 'string', default: 'spring-greeting' },
    burst: { type: 'string', default: '200,1000' },
    'warm-fn': { type: 'string', default: 'hello-node' },
    'warm-connections': { type: 'string', default: '1,64' },
    'warm-duration': { type: 'string', default: '5' },
    'warm-rounds': { type: 'string', default: '3' },
    warmup: { type: 'string', default: '2' },
    'gateway-workers': { type: 'string', default: '1' },
    'nginx-workers': { type: 'string' },
    settle: { type: 'string', default: '500' },
    'state-dir': { type: 'string', default: '/var/lib/initless-bench' },
    'prepare-timeout': { type: 'string', default: '1800' },
    out: { type: 'string', default: join(import.meta.dirname, 'results') },
    ...QUIET_ARGS,
    help: { type: 'boolean', short: 'h', default: false },
  },
})
if (args.help) {
  console.log(USAGE)
  process.exit(0)
}

const list = (s: string) =>
  s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)
function count(name: string, value: string, min: number): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < min) usage(`--${name} must be a whole number >= ${min}, got '${value}'`)
  return n
}
function usage(problem: string): never {
  console.error(`bench: ${problem}\n\n${USAGE}`)
  process.exit(2)
}

const sections = new Set(list(args.only))
for (const s of sections) if (!['cold', 'burst', 'warm'].includes(s)) usage(`unknown section '${s}'`)
const coldFns = sections.has('cold') ? list(args.functions) : []
const variants = list(args.runtimes) as Variant[]
for (const v of variants) if (!VARIANTS.includes(v)) usage(`unknown runtime '${v}'`)
const burstFn = args['burst-fn']
const warmFn = args['warm-fn']
const allFns = [
  ...new Set([
    ...coldFns,
    ...(sections.has('burst') ? [burstFn] : []),
    ...(sections.has('warm') ? [warmFn] : []),
  ]),
]
for (const fn of allFns) if (!SAMPLE_REQUESTS[fn]) usage(`no sample request for '${fn}' (bench/samples.ts)`)
if (!allFns.length) usage('nothing to run')
const settings = {
  n: count('n', args.n, 1),
  functions: coldFns,
  runtimes: variants,
  sections: [...sections],
  burstFunction: burstFn,
  burstRequests: list(args.burst).map((c) => count('burst', c, 1)),
  warmFunction: warmFn,
  warmConnections: list(args['warm-connections']).map((c) => count('warm-connections', c, 1)),
  warmDurationS: count('warm-duration', args['warm-duration'], 1),
  warmRounds: count('warm-rounds', args['warm-rounds'], 1),
  warmupS: count('warmup', args.warmup, 1),
  gatewayWorkers: count('gateway-workers', args['gateway-workers'], 1),
  // The same number of processes on both sides keeps the throughput comparison fair.
  nginxWorkers: count('nginx-workers', args['nginx-workers'] ?? args['gateway-workers'], 1),
  settleMs: count('settle', args.settle, 0),
  stateDir: args['state-dir'],
}
const prepareTimeoutMs = count('prepare-timeout', args['prepare-timeout'], 1) * 1000

const command =
  process.env.INITLESS_BENCH_COMMAND ?? ['node --import tsx bench/run.ts', ...process.argv.slice(2)].join(' ')
const progress = (line: string) => console.error(line)

// Every cleanup, newest first, once: on normal completion, on failure and on SIGINT/SIGTERM.
const cleanups: (() => Promise<void>)[] = []
let cleaning: Promise<void> | undefined
const cleanup = () =>
  (cleaning ??= (async () => {
    for (const c of cleanups.reverse()) {
      await c().catch((err: unknown) => console.error(`bench: cleanup step failed: ${String(err)}`))
    }
  })())
const aborted = new AbortController()
const stop = (why: string, exitCode: number) => {
  if (aborted.signal.aborted) return
  aborted.abort(new Error(`${why} received`))
  console.error(`bench: ${why}: stopping the gateway, the executor, their instances and nginx`)
  void cleanup().finally(() => process.exit(exitCode))
}
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const)
  process.on(signal, () => stop(signal, 128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1)))
// Output that cannot be written (the reader went away: `| head`, a closed terminal) would end the
// process with an uncaught error and leave its stack running. Stop through the cleanup instead,
// as on SIGPIPE; later writes to the closed stream land in this same listener.
for (const stream of [process.stdout, process.stderr])
  stream.on('error', (err: NodeJS.ErrnoException) => stop(err.code ?? 'output error', 128 + 13))

// Before anything of the benchmark's own starts: its executor and gateway would count as busy.
const quiet = await passQuietGate('bench', args, progress)
const env = { ...benchEnvironment([command]), quiet }
const sectionErrors: string[] = []
let coldStart: ColdStartRow[] = []
const bursts: BurstRow[] = []
let warm: WarmResult | null = null
const policyRuntimes: Record<string, RuntimeKind> = {}
let stack: BenchStack | undefined
try {
  progress(`bench: starting executor + gateway for ${allFns.join(', ')} (state dir ${settings.stateDir})`)
  stack = await startBenchStack({
    functions: allFns,
    ...(sections.has('warm') ? { warmFunction: warmFn } : {}),
    stateDir: settings.stateDir,
    gatewayWorkers: settings.gatewayWorkers,
    redisUrl: process.env.INITLESS_REDIS_URL ?? 'redis://127.0.0.1:6379',
    prepareTimeoutMs,
    progress,
    defer: (c) => cleanups.push(c),
  })
  // The runtime each function's restore policy picks for its snapshot: the targets are judged on it.
  const lazyThreshold = loadExecutorConfig(process.env).INITLESS_LAZY_THRESHOLD
  const store = createSnapshotStore({ stateDir: settings.stateDir })
  for (const def of (await loadFunctionDefs(stack.functionsDir)).functions) {
    const snapshot = await store.latest(def.name)
    policyRuntimes[def.name] = chooseRuntime(
      def.manifest.restore.policy,
      snapshot?.meta.sizeBytes,
      lazyThreshold,
    )
  }

  if (coldFns.length) {
    try {
      coldStart = await runColdStartMatrix(stack, {
        functions: coldFns,
        variants,
        n: settings.n,
        settleMs: settings.settleMs,
        progress,
        signal: aborted.signal,
      })
    } catch (err) {
      sectionErrors.push(`cold start: ${String(err)}`)
    }
  }

  if (sections.has('burst')) {
    try {
      // The reference single cold start: the matrix's row for the policy's runtime, else measured now.
      const policy = policyRuntimes[burstFn]
      const variant = policy === 'docker' ? undefined : policy
      const row = coldStart.find((c) => c.function === burstFn && c.runtime === variant)
      let single: number | null = row?.p50Ms ?? null
      let basis = row ? `cold-start p50 with ${row.runtime} (${row.n} runs)` : ''
      if (!row && variant) {
        const runs: number[] = []
        for (let i = 0; i < 3; i++)
          runs.push((await coldRun(stack, burstFn, variant, settings.settleMs)).ttfbMs)
        single = round(percentile(runs, 50))
        basis = `single cold start p50 with ${variant} (3 runs before the burst)`
      }
      // Each burst starts from zero (runBurst scales the function down and waits first).
      for (const requests of settings.burstRequests) {
        const b = await runBurst(stack, { fn: burstFn, requests, settleMs: settings.settleMs, progress })
        bursts.push({ ...b, singleColdP50Ms: single, singleColdBasis: basis })
        progress(
          `[burst ${burstFn} x${requests}] ${b.errors} errors, ${b.restores} restores, p50 ${b.p50Ms} ms, p99 ${b.p99Ms} ms`,
        )
      }
    } catch (err) {
      sectionErrors.push(`burst: ${String(err)}`)
    }
  }

  if (sections.has('warm')) {
    try {
      const cpus = (await loadFunctionDefs(stack.functionsDir)).functions.find((f) => f.name === warmFn)
        ?.manifest.resources.cpus
      warm = await runWarmPath(
        stack,
        {
          fn: warmFn,
          connections: settings.warmConnections,
          durationS: settings.warmDurationS,
          rounds: settings.warmRounds,
          warmupS: settings.warmupS,
          nginxWorkers: settings.nginxWorkers,
          progress,
          defer: (c) => cleanups.push(c),
        },
        cpus,
      )
    } catch (err) {
      sectionErrors.push(`warm path: ${String(err)}`)
    }
  }
} catch (err) {
  sectionErrors.push(String(err))
} finally {
  progress('bench: stopping executor + gateway')
  await cleanup()
}

const partial: Omit<BenchResult, 'targets'> = {
  ...env,
  kind: 'initless benchmark (through the gateway)',
  settings,
  policyRuntimes,
  coldStart,
  bursts,
  warm: warm ? warm.rows.map((w) => ({ function: warmFn, ...w })) : [],
  warmSetup: warm
    ? {
        function: warm.function,
        instance: warm.instance,
        instanceCpus: warm.instanceCpus,
        nginxVersion: warm.nginxVersion,
        nginxWorkers: warm.nginxWorkers,
        instancesAfter: warm.instancesAfter,
      }
    : null,
  method: [
    'One executor + gateway pair (the real processes), isolated by queue, key prefix, host id, port and its own state dir; functions are copies of the samples with scaling.poolSize 1, timeouts.start 300s, idleTimeout 30m (and concurrency 1000 for the warm-path function).',
    'Runtimes are forced per run with the gateway start override (PUT /admin/functions/<fn>/runtime {runtime, noPool}); lazy+pool = lazy with the pre-started sandbox, every other runtime bypasses the pool (noPool). Each run is checked: registry runtime, executor "instance ready" pooled flag, Server-Timing "cold", answer body.',
    'Before every cold request the function is scaled to zero (POST /admin/functions/<fn>/scale {instances:0}) and the bench waits until no registry record, restored process, runc container or Docker container of it is left, then settles.',
    'Time to first byte: node:http request on a fresh connection (agent: false), sent -> the response event. One untimed round per function first; runtimes interleaved in a random order per round.',
    "Burst: all requests at once, each on its own connection, no override but noPool (the restore policy, as the samples ship with poolSize 0); each answer's Server-Timing (wait, upstream, the instance's phases) gives the burst's profile.",
    "Warm path: autocannon (library) per target after an untimed run, in rounds with the targets in a rotated order; latency percentiles from every response time of all rounds (float ms), req/s = median over the rounds of autocannon requests.average; CPU of the proxy's processes, of this process (autocannon) and of the instance's cgroup (usage, CFS throttling) read from /proc and the cgroup files before and after each timed run.",
    'ratioToBoot = boot p50 / runtime p50. Targets on the runtime the restore policy picks (policyRuntimes).',
  ],
}
const result: BenchResult & { errors: string[] } = {
  ...partial,
  targets: evaluateTargets(partial),
  errors: sectionErrors,
}
await mkdir(args.out, { recursive: true })
const stamp = env.date.replace(/[:.]/g, '-')
const json = `${JSON.stringify(result, null, 2)}\n`
const md =
  renderMarkdown(result) +
  (sectionErrors.length
    ? `\n## Errors\n\n${sectionErrors.map((e) => `- ${e.split('\n')[0]}`).join('\n')}\n`
    : '')
await writeFile(join(args.out, `${stamp}.json`), json)
await writeFile(join(args.out, 'latest.json'), json)
await writeFile(join(args.out, 'latest.md'), md)
await writeFile(join(args.out, 'latest.svg'), await renderChart(result))
console.log(md)
console.error(`bench: wrote ${join(args.out, `${stamp}.json`)}, latest.json, latest.md, latest.svg`)
for (const e of sectionErrors) console.error(`bench: ERROR ${e}`)
process.exit(sectionErrors.length ? 1 : 0)
