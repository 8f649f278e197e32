/**
 * Restore benchmark (executor level): for every sample and runtime, the time from enqueueing a
 * restore job to the job reporting a ready instance (readiness probe passed), through the real
 * BullMQ queue, Redis registry, runc, CRIU and Docker. Runtimes are interleaved in each round, so
 * the machine's noise hits them alike; compare ratios within one run.
 *
 *   node --import tsx bench/restore.ts [--n 10] [--functions a,b] [--runtimes boot,eager,lazy,lazy+pool,docker]
 *     [--concurrent 5] [--mixed 10] [--mixed-rounds 3]
 *
 * --concurrent: rounds of 3 simultaneous lazy restores of flask-table. --mixed: simultaneous lazy
 * restores of the benchmarked functions in turn (0: none), each against its function's lazy p50
 * alone from the same run; --mixed-rounds times. Both measure the machine's CPU from the enqueue to
 * the last ready instance: the busy CPU-seconds spread over every CPU are a floor under the round.
 *
 * Writes bench/results/restore-<date>.json, restore-latest.json and restore-latest.md.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { cp, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { loadExecutorConfig } from '../executor/config.ts'
import { httpOnce } from '../executor/adapters/probe.ts'
import { startExecutor } from '../executor/start.ts'
import { createBullmqRestoreQueue } from '../shared/bullmq-restore-queue.ts'
import type { RestoreJobResult, RuntimeKind } from '../shared/contracts.ts'
import { loadFunctionDefs, type FunctionDef } from '../shared/functions.ts'
import { errorMessage } from '../shared/errors.ts'
import { createLogger } from '../shared/logger.ts'
import { createRedis, deleteKeys } from '../shared/redis.ts'
import { createRestoreClient } from '../shared/restore-client.ts'
import { formatBytes } from '../shared/units.ts'
import { cpuFloorOf, machineCpuMeter, type MachineCpu } from './cpu.ts'
import { benchEnvironment, medianOf, percentile, rcuNote, round } from './env.ts'
import { passQuietGate, QUIET_ARGS } from './quiet.ts'
import { evaluateConcurrency, targetsTable } from './report.ts'
import { SAMPLE_REQUESTS } from './samples.ts'

type Variant = 'boot' | 'eager' | 'lazy' | 'lazy+pool' | 'docker'

const { values: args } = parseArgs({
  options: {
    n: { type: 'string', default: '10' },
    functions: { type: 'string', default: 'flask-table,spring-greeting,hello-node,ts-compile' },
    runtimes: { type: 'string', default: 'boot,docker,eager,lazy,lazy+pool' },
    concurrent: { type: 'string', default: '5' },
    mixed: { type: 'string', default: '10' },
    'mixed-rounds': { type: 'string', default: '3' },
    out: { type: 'string', default: join(import.meta.dirname, 'results') },
    ...QUIET_ARGS,
  },
})
// Before the benchmark's own executor starts: its CRIU and instances would count as busy.
const quiet = await passQuietGate('bench/restore', args)
const N = Number(args.n)
const variants = args.runtimes.split(',') as Variant[]
const prefix = `bench-${randomBytes(4).toString('hex')}`
const queueName = `bench-${randomUUID()}`
const base = loadExecutorConfig(process.env)
const config = loadExecutorConfig({
  ...process.env,
  INITLESS_HOST_ID: `bench-${base.hostId}`,
  INITLESS_QUEUE_NAME: queueName,
  INITLESS_KEY_PREFIX: prefix,
  INITLESS_RESTORE_CONCURRENCY: '4',
  // Every instance is stopped by the bench itself: no reaping in between.
  INITLESS_REAP_INTERVAL: '24h',
})
const logger = createLogger({ level: 'warn', name: 'bench' })
const all = await loadFunctionDefs(config.INITLESS_FUNCTIONS_DIR)
// Every function gets a one-sandbox pool; runs outside the `lazy+pool` variant bypass it (noPool).
const functions: FunctionDef[] = all.functions
  .filter((f) => args.functions.split(',').includes(f.name))
  .map((f) => ({
    ...f,
    manifest: { ...f.manifest, scaling: { ...f.manifest.scaling, poolSize: 1, maxInstances: 10 } },
  }))

// The executor as its process runs it (same wiring, same queue consumer), in this process so the
// bench can ask it to prepare and stop instances. It takes the state dir's lock: stop a running
// executor of this state dir first (ERR_STATE_DIR_IN_USE otherwise).
const executor = await startExecutor(config, {
  logger,
  redis: createRedis(config.INITLESS_REDIS_URL, { name: 'initless-bench-executor' }),
  functions,
})
const { instances, registry } = executor
const queue = createBullmqRestoreQueue({ redisUrl: config.INITLESS_REDIS_URL, logger, queueName })
await queue.ready()
const restores = createRestoreClient({ registry, queue })

interface Run {
  readonly totalMs: number
  readonly phases: RestoreJobResult['phases']
}

/** One restore, timed from the enqueue to the ready instance; the instance is left running. */
async function restoreOnly(
  fn: FunctionDef,
  variant: Variant,
): Promise<{ run: Run; result: RestoreJobResult }> {
  const runtime: RuntimeKind = variant === 'lazy+pool' ? 'lazy' : variant
  if (variant === 'lazy+pool') await instances.fillPools()
  const started = performance.now()
  const result = await restores.restore(
    {
      fn: fn.name,
      maxInstances: 100,
      reason: 'bench',
      traceId: 'bench',
      options: { runtime, noPool: variant !== 'lazy+pool' },
    },
    300_000,
  )
  const totalMs = performance.now() - started
  if (variant === 'lazy+pool' && !result.pooled)
    throw new Error(`${fn.name}: the pooled run did not use the pool`)
  if (result.runtime !== runtime) throw new Error(`${fn.name}: asked for ${runtime}, got ${result.runtime}`)
  return { run: { totalMs, phases: result.phases }, result }
}

/** Outside the timed part: the instance answers what the sample promises; then it is stopped. */
async function checkAndStop(fn: FunctionDef, variant: Variant, result: RestoreJobResult): Promise<void> {
  const req = SAMPLE_REQUESTS[fn.name]
  if (req) {
    const res = await httpOnce(result.address.host, result.address.port, req.path, {
      method: req.method,
      ...(req.body ? { body: req.body } : {}),
      timeoutMs: 30_000,
    }).catch(async (err: unknown) => {
      const kept = await keepEvidence(result.instanceId)
      throw new Error(`${fn.name} ${variant} (instance ${result.instanceId}): ${errorMessage(err)}${kept}`, {
        cause: err,
      })
    })
    if (res.status !== 200 || !res.body.includes(req.contains))
      throw new Error(
        `${fn.name} ${variant}: wrong answer ${res.status} ${res.body.slice(0, 100)}${await keepEvidence(result.instanceId)}`,
      )
  }
  await instances.stop(result.instanceId, 'bench')
}

async function restoreOnce(fn: FunctionDef, variant: Variant): Promise<Run> {
  const { run, result } = await restoreOnly(fn, variant)
  await checkAndStop(fn, variant, result)
  return run
}

/**
 * Simultaneous lazy restores of `picks`, the machine's CPU measured until the last is ready; then
 * each instance is checked and stopped, so no round's teardown overlaps the restores measured.
 */
async function simultaneous(picks: readonly FunctionDef[]) {
  const meter = machineCpuMeter(undefined)
  const settled = await Promise.allSettled(picks.map((fn) => restoreOnly(fn, 'lazy')))
  const cpu = meter()
  const checked = await Promise.allSettled(
    settled.map((s, i) =>
      s.status === 'fulfilled' ? checkAndStop(picks[i]!, 'lazy', s.value.result) : Promise.resolve(),
    ),
  )
  return {
    cpu,
    outcomes: settled.map((s, i): PromiseSettledResult<Run> => {
      const c = checked[i]!
      if (s.status === 'rejected') return s
      return c.status === 'rejected' ? c : { status: 'fulfilled', value: s.value.run }
    }),
  }
}

/**
 * A restored instance that answered wrongly or not at all: keep its CRIU logs, output and what its
 * threads are blocked in (bench/results/failures/<instance>/) before the run cleans it up.
 */
async function keepEvidence(instanceId: string): Promise<string> {
  const from = join(config.INITLESS_STATE_DIR, 'instances', instanceId)
  const to = join(args.out, 'failures', instanceId)
  try {
    await mkdir(to, { recursive: true })
    await cp(join(from, 'criu'), join(to, 'criu'), { recursive: true, filter: (f) => !f.endsWith('.socket') })
    await cp(join(from, 'output.log'), join(to, 'output.log')).catch(() => undefined)
    const pid = (await readFile(join(from, 'pid'), 'utf8').catch(() => '')).trim()
    const ps = (argv: string[]) => {
      try {
        return execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8' })
      } catch (err) {
        return errorMessage(err)
      }
    }
    const state = pid
      ? ps(['ps', '-L', '-o', 'pid,tid,stat,wchan:32,comm', '-p', pid]) +
        ps(['ps', '-o', 'pid,ppid,stat,wchan:32,args', '-C', 'criu'])
      : 'no pid file\n'
    await writeFile(join(to, 'processes.txt'), state)
    return `\n(evidence kept in ${to})`
  } catch (err) {
    return `\n(could not keep evidence: ${errorMessage(err)})`
  }
}

function summarize(fn: string, variant: string, runs: Run[], snapshotBytes: number) {
  const totals = runs.map((r) => r.totalMs)
  const median = (k: keyof Run['phases']) => medianOf(runs.map((r) => r.phases[k]))
  return {
    function: fn,
    runtime: variant,
    n: runs.length,
    p50Ms: round(percentile(totals, 50)),
    p95Ms: round(percentile(totals, 95)),
    minMs: round(Math.min(...totals)),
    maxMs: round(Math.max(...totals)),
    /** Every run's total, in run order (outliers show here, not in the percentiles). */
    totalsMs: totals.map((t) => round(t)),
    /** Every run's phases, in run order. */
    runs: runs.map((r) => r.phases),
    phasesP50: {
      queueMs: median('queueMs'),
      sandboxMs: median('sandboxMs'),
      restoreMs: median('restoreMs'),
      criuMs: median('criuMs'),
      readyMs: median('readyMs'),
    },
    snapshotBytes,
  }
}

/**
 * `--mixed` simultaneous lazy restores, the benchmarked functions in turn, `--mixed-rounds` times.
 * A restore that fails is counted, not fatal: errors are part of the result.
 */
async function mixedRestores(alone: (fn: string) => number | undefined) {
  const count = Number(args.mixed)
  const rounds = Number(args['mixed-rounds'])
  if (!(count > 0) || !variants.includes('lazy')) return undefined
  const totals = new Map<string, number[]>(functions.map((f) => [f.name, []]))
  const errors: string[] = []
  const cpu: MachineCpu[] = []
  for (let r = 0; r < rounds; r++) {
    const picks = Array.from({ length: count }, (_, i) => functions[i % functions.length]!)
    const result = await simultaneous(picks)
    const settled = result.outcomes
    cpu.push(result.cpu)
    settled.forEach((s, i) => {
      if (s.status === 'fulfilled') totals.get(picks[i]!.name)!.push(s.value.totalMs)
      else errors.push(`${picks[i]!.name}: ${errorMessage(s.reason)}`)
    })
    process.stderr.write(`[mixed] round ${r + 1}/${rounds}: ${errors.length} errors so far\n`)
  }
  const byFunction = [...totals].map(([fn, ms]) => {
    const aloneP50Ms = alone(fn) ?? NaN
    const p50Ms = round(percentile(ms, 50))
    const maxMs = round(Math.max(...ms))
    return {
      function: fn,
      n: ms.length,
      aloneP50Ms,
      p50Ms,
      maxMs,
      p50Ratio: round(p50Ms / aloneP50Ms, 2),
      maxRatio: round(maxMs / aloneP50Ms, 2),
      totalsMs: ms.map((t) => round(t)),
    }
  })
  return { simultaneous: count, rounds, errors, byFunction, cpu: cpuFloor(cpu) }
}

/**
 * The CPU floor of simultaneous restores: per round, the machine's busy CPU-seconds spread over all
 * its CPUs is the least wall time the round could take; medians over the rounds.
 */
function cpuFloor(rounds: readonly MachineCpu[]) {
  if (!rounds.length) return undefined
  const p50 = (f: (c: MachineCpu) => number) => percentile(rounds.map(f), 50)
  return {
    rounds: rounds.length,
    cpus: rounds[0]!.cpus,
    wallMsP50: round(p50((c) => c.wallS * 1000)),
    busyShareP50: round(
      p50((c) => cpuFloorOf(c).busyShare),
      3,
    ),
    floorMsP50: round(p50((c) => cpuFloorOf(c).floorMs)),
    /** Each round's reading, in order. */
    readings: rounds,
  }
}

function describeFloor(f: NonNullable<ReturnType<typeof cpuFloor>>, aloneMs: number | undefined): string {
  const x = aloneMs ? ` (${round(f.floorMsP50 / aloneMs, 2)}x flask-table alone)` : ''
  return (
    `per round (median of ${f.rounds}) the ${f.cpus} CPUs were busy ${round(f.busyShareP50 * 100, 0)}% of ` +
    `its ${f.wallMsP50} ms; the CPU-seconds the machine spent, spread over all ${f.cpus} CPUs, take ${f.floorMsP50} ms${x}.`
  )
}

let failed: unknown
try {
  const env = {
    ...benchEnvironment(['node', '--import', 'tsx', 'bench/restore.ts', ...process.argv.slice(2)]),
    quiet,
  }
  const rows: ReturnType<typeof summarize>[] = []
  for (const fn of functions) {
    process.stderr.write(`[${fn.name}] preparing (build, bake)\n`)
    const prep = await instances.prepare(fn)
    const size = prep.snapshot?.meta.sizeBytes ?? 0
    const runs = new Map<Variant, Run[]>(variants.map((v) => [v, []]))
    // One untimed warm-up round: page cache, image rootfs unpack, template containers.
    for (const v of variants) await restoreOnce(fn, v)
    for (let i = 0; i < N; i++) {
      const order = [...variants].sort(() => Math.random() - 0.5)
      for (const v of order) runs.get(v)!.push(await restoreOnce(fn, v))
      process.stderr.write(`[${fn.name}] round ${i + 1}/${N}\n`)
    }
    for (const v of variants) rows.push(summarize(fn.name, v, runs.get(v)!, size))
  }

  // 3 concurrent lazy restores of the biggest snapshot, from one snapshot, each its own sandbox.
  const concurrentRuns: Run[] = []
  const concurrentCpu: MachineCpu[] = []
  const flask = functions.find((f) => f.name === 'flask-table')
  if (flask && Number(args.concurrent) > 0) {
    for (let i = 0; i < Number(args.concurrent); i++) {
      const result = await simultaneous([flask, flask, flask])
      for (const o of result.outcomes) {
        if (o.status === 'rejected') throw o.reason
        concurrentRuns.push(o.value)
      }
      concurrentCpu.push(result.cpu)
    }
  }
  const concurrent = flask ? summarize('flask-table', 'lazy x3 concurrent', concurrentRuns, 0) : undefined

  const lazyAlone = (fn: string) => rows.find((r) => r.function === fn && r.runtime === 'lazy')?.p50Ms
  const mixed = await mixedRestores(lazyAlone)
  const bootOf = (fn: string) => rows.find((r) => r.function === fn && r.runtime === 'boot')?.p50Ms
  const result = {
    ...env,
    kind: 'restore (job enqueued -> instance ready)',
    restore: rows.map((r) => ({
      ...r,
      ratioToBoot: bootOf(r.function) ? round(bootOf(r.function)! / r.p50Ms, 2) : null,
    })),
    concurrentLazy: concurrent
      ? {
          ...concurrent,
          ratioToAlone: lazyAlone('flask-table')
            ? round(concurrent.p50Ms / lazyAlone('flask-table')!, 2)
            : null,
          cpu: cpuFloor(concurrentCpu),
        }
      : undefined,
    mixed,
  }
  const targets = evaluateConcurrency({ ...result, aloneP50Ms: lazyAlone('flask-table') })
  await mkdir(args.out, { recursive: true })
  const stamp = env.date.replace(/[:.]/g, '-')
  const json = JSON.stringify({ ...result, targets }, null, 2)
  await writeFile(join(args.out, `restore-${stamp}.json`), json)
  await writeFile(join(args.out, 'restore-latest.json'), json)
  const md = [
    `Restore benchmark, ${env.date}, \`${env.command}\``,
    `Machine: ${env.machine.cpu}, ${env.machine.cores} cores, ${env.machine.memoryGiB} GiB, kernel ${env.machine.kernel}${rcuNote(env.machine)}, load ${env.machine.loadAvg1m} at start. CRIU ${env.versions.criu}, runc ${env.versions.runc}, Docker ${env.versions.docker}, Node ${env.versions.node}.`,
    '',
    '| function | snapshot | runtime | n | p50 ms | p95 ms | boot / this | queue | sandbox | restore | of it CRIU | ready |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...result.restore.map(
      (r) =>
        `| ${r.function} | ${formatBytes(r.snapshotBytes)} | ${r.runtime} | ${r.n} | ${r.p50Ms} | ${r.p95Ms} | ${r.ratioToBoot ?? '-'}x | ${r.phasesP50.queueMs} | ${r.phasesP50.sandboxMs} | ${r.phasesP50.restoreMs} | ${Number.isFinite(r.phasesP50.criuMs) ? r.phasesP50.criuMs : '-'} | ${r.phasesP50.readyMs} |`,
    ),
    ...(concurrent
      ? [
          `| flask-table | | 3 concurrent lazy | ${concurrent.n} | ${concurrent.p50Ms} | ${concurrent.p95Ms} | | ${concurrent.phasesP50.queueMs} | ${concurrent.phasesP50.sandboxMs} | ${concurrent.phasesP50.restoreMs} | ${concurrent.phasesP50.criuMs} | ${concurrent.phasesP50.readyMs} |`,
        ]
      : []),
    '',
    'Phases are medians of each phase on its own (they need not add up to the p50 total).',
    ...(mixed
      ? [
          '',
          `${mixed.simultaneous} simultaneous lazy restores of ${functions.map((f) => f.name).join(', ')} in turn, ${mixed.rounds} rounds (executor restore concurrency ${config.INITLESS_RESTORE_CONCURRENCY}): ${mixed.errors.length} errors; each restore against its function's lazy p50 alone:`,
          '',
          '| function | n | alone p50 ms | p50 ms | max ms | p50 / alone | max / alone |',
          '|---|---|---|---|---|---|---|',
          ...mixed.byFunction.map(
            (m) =>
              `| ${m.function} | ${m.n} | ${m.aloneP50Ms} | ${m.p50Ms} | ${m.maxMs} | ${m.p50Ratio}x | ${m.maxRatio}x |`,
          ),
        ]
      : []),
    ...(result.concurrentLazy?.cpu || mixed?.cpu ? [''] : []),
    ...(result.concurrentLazy?.cpu
      ? [
          `3 concurrent flask-table restores: ${describeFloor(result.concurrentLazy.cpu, lazyAlone('flask-table'))}`,
        ]
      : []),
    ...(mixed?.cpu ? [`${mixed.simultaneous} mixed restores: ${describeFloor(mixed.cpu, undefined)}`] : []),
    ...(concurrent || mixed ? ['', ...targetsTable(targets)] : []),
  ].join('\n')
  await writeFile(join(args.out, 'restore-latest.md'), `${md}\n`)
  console.log(md)
} catch (err) {
  failed = err
} finally {
  // Also after a failure: instances, pooled sandboxes, their daemons and the docker runtime's
  // template containers would outlive this process otherwise (the executor's close stops them).
  await executor.close()
  await queue.close()
  const redis = createRedis(config.INITLESS_REDIS_URL, { name: 'initless-bench-cleanup' })
  await deleteKeys(redis, [`${prefix}:*`, `bull:${queueName}:*`])
  redis.disconnect()
}
if (failed) {
  console.error(failed)
  process.exit(1)
}
process.exit(0)
