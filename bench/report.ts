/**
 * The benchmark's result document: targets (met or missed, and by how much) and the Markdown
 * rendering of everything. Pure functions of the measured data.
 */
import type { RuntimeKind } from '../shared/contracts.ts'
import type { BurstProfile, BurstResult } from './burst.ts'
import { cpuFloorOf } from './cpu.ts'
import type { ColdStartRow, Phase } from './cold-start.ts'
import { PHASES } from './cold-start.ts'
import type { BenchEnvironment } from './env.ts'
import { rcuNote, round } from './env.ts'
import { describeBusy, type QuietVerdict } from './quiet.ts'
import type { WarmResult } from './warm.ts'

export interface TargetResult {
  readonly target: string
  /** What was compared, and from which rows. */
  readonly basis: string
  readonly value: number | null
  readonly comparison: '<=' | '>='
  readonly limit: number
  readonly unit: 'ms' | 'x' | '%' | 'errors'
  /** null: not measured in this run. */
  readonly met: boolean | null
  /** "met by 12 ms (8%)", "missed by 30 ms (+20%)", "not measured". */
  readonly margin: string
}

export type BurstRow = BurstResult & { singleColdP50Ms: number | null; singleColdBasis: string }

export interface BenchResult extends BenchEnvironment {
  readonly kind: string
  readonly settings: Record<string, unknown>
  /** The runtime each function's restore policy picks (the targets are judged on it). */
  readonly policyRuntimes: Readonly<Record<string, RuntimeKind>>
  readonly coldStart: readonly ColdStartRow[]
  /** One burst per size asked for (`--burst 200,1000`), in that order. */
  readonly bursts: readonly BurstRow[]
  readonly warm: readonly (WarmResult['rows'][number] & { function: string })[]
  readonly warmSetup: Omit<WarmResult, 'rows'> | null
  readonly targets: readonly TargetResult[]
  readonly method: readonly string[]
  /** The quiet-machine gate's verdict (bench/quiet.ts); absent in results older than the gate. */
  readonly quiet?: QuietVerdict
}

/**
 * The targets of performance round 2, through the gateway on a quiet machine: every sample's cold
 * start (p50, on the runtime its restore policy picks, without a pool; with the pool in a row of
 * its own) and its tail (p95 / p50); every burst from zero; the warm path against nginx.
 */
export const COLD_MAX_P50_MS = 50
export const COLD_MAX_P95_FACTOR = 1.5
export const BURST_MAX_P99_FACTOR = 3
export const WARM_MAX_ADDED_P50_MS = 1
export const MIN_THROUGHPUT_VS_NGINX_PCT = 50
/** At the executor (bench/restore.ts): 3 concurrent lazy restores, and simultaneous mixed ones. */
export const CONCURRENT_MAX_FACTOR = 1.5
export const MIXED_MAX_FACTOR = 4
/** bench/standby.ts: a request to a frozen standby, thaw to first byte. */
export const THAW_MAX_MS = 10

interface ConcurrencyResult {
  readonly concurrentLazy?: { readonly n: number; readonly p50Ms: number; readonly maxMs: number } | undefined
  readonly aloneP50Ms?: number | undefined
  readonly mixed?:
    | {
        readonly simultaneous: number
        readonly errors: readonly string[]
        readonly byFunction: readonly {
          readonly function: string
          readonly aloneP50Ms: number
          readonly p50Ratio: number
          readonly maxRatio: number
        }[]
      }
    | undefined
}

/**
 * The concurrency targets of performance round 2: each of 3 simultaneous lazy restores of
 * flask-table within 1.5x of one alone, and simultaneous mixed restores with 0 errors, each within
 * 4x of its function's restore alone. "Each" is judged on the p50 and on the slowest restore.
 */
export function evaluateConcurrency(r: ConcurrencyResult): TargetResult[] {
  const out: TargetResult[] = []
  const c = r.concurrentLazy
  const alone = r.aloneP50Ms
  const basis = (what: string, ms: number) => `${what} ${ms} ms / flask-table lazy p50 alone ${alone} ms`
  if (c && c.n > 0 && alone) {
    out.push(
      judge(
        '3 concurrent flask-table restores: p50',
        basis('p50', c.p50Ms),
        c.p50Ms / alone,
        '<=',
        CONCURRENT_MAX_FACTOR,
        'x',
      ),
      judge(
        '3 concurrent flask-table restores: slowest',
        basis('slowest', c.maxMs),
        c.maxMs / alone,
        '<=',
        CONCURRENT_MAX_FACTOR,
        'x',
      ),
    )
  } else
    out.push(
      judge('3 concurrent flask-table restores: p50', 'not run', null, '<=', CONCURRENT_MAX_FACTOR, 'x'),
    )
  const m = r.mixed
  if (!m) return [...out, judge('mixed simultaneous restores: errors', 'not run', null, '<=', 0, 'errors')]
  out.push(
    judge(
      `${m.simultaneous} simultaneous mixed restores: errors`,
      `${m.simultaneous} at once`,
      m.errors.length,
      '<=',
      0,
      'errors',
    ),
  )
  for (const f of m.byFunction) {
    const base = `against its lazy p50 alone, ${f.aloneP50Ms} ms`
    out.push(
      judge(`mixed: ${f.function} p50`, base, f.p50Ratio, '<=', MIXED_MAX_FACTOR, 'x'),
      judge(`mixed: ${f.function} slowest`, base, f.maxRatio, '<=', MIXED_MAX_FACTOR, 'x'),
    )
  }
  return out
}

export function judge(
  target: string,
  basis: string,
  value: number | null | undefined,
  comparison: '<=' | '>=',
  limit: number,
  unit: TargetResult['unit'],
): TargetResult {
  if (value === null || value === undefined || !Number.isFinite(value))
    return { target, basis, value: null, comparison, limit, unit, met: null, margin: 'not measured' }
  const met = comparison === '<=' ? value <= limit : value >= limit
  const diff = round(Math.abs(value - limit), unit === 'ms' || unit === 'x' ? 2 : 1)
  const rel = limit !== 0 && unit !== '%' ? ` (${round((Math.abs(value - limit) / limit) * 100, 0)}%)` : ''
  const u = unit === 'x' ? 'x' : unit === '%' ? ' percentage points' : ` ${unit}`
  return {
    target,
    basis,
    value: round(value, 2),
    comparison,
    limit,
    unit,
    met,
    margin: `${met ? 'met' : 'missed'} by ${diff}${u}${rel}`,
  }
}

/** The functions of the cold-start matrix, in its order. */
const coldFunctions = (r: Pick<BenchResult, 'coldStart'>) => [...new Set(r.coldStart.map((c) => c.function))]

/** The policy's row and, when the policy restores lazily, the pooled row beside it. */
function policyRows(r: Pick<BenchResult, 'coldStart' | 'policyRuntimes'>, fn: string) {
  const policy = r.policyRuntimes[fn]
  const rows: { row: ColdStartRow; label: string }[] = []
  for (const [runtime, label] of [
    [policy, ''],
    [policy === 'lazy' ? 'lazy+pool' : undefined, ', with the pool'],
  ] as const) {
    const row = r.coldStart.find((c) => c.function === fn && c.runtime === runtime)
    if (row) rows.push({ row, label })
  }
  return rows
}

export function evaluateTargets(r: Omit<BenchResult, 'targets'>): TargetResult[] {
  const out: TargetResult[] = []
  for (const fn of coldFunctions(r)) {
    const rows = policyRows(r, fn)
    if (!rows.length) {
      const basis = `no ${r.policyRuntimes[fn] ?? 'policy'} row for ${fn} in this run's cold-start matrix`
      out.push(judge(`${fn} cold start`, basis, null, '<=', COLD_MAX_P50_MS, 'ms'))
      continue
    }
    for (const { row, label } of rows) {
      const how = label ? 'with the pre-started sandbox' : "its restore policy's choice, no pool"
      out.push(
        judge(
          `${fn} cold start${label}`,
          `p50 of ${row.n} cold starts with ${row.runtime} (${how})`,
          row.p50Ms,
          '<=',
          COLD_MAX_P50_MS,
          'ms',
        ),
        judge(
          `${fn} cold start${label}: tail`,
          `p95 ${row.p95Ms} ms / p50 ${row.p50Ms} ms`,
          row.p50Ms > 0 ? row.p95Ms / row.p50Ms : null,
          '<=',
          COLD_MAX_P95_FACTOR,
          'x',
        ),
      )
    }
  }
  // Every size asked for is judged: one that failed (or never ran) reads "not measured".
  const asked = Array.isArray(r.settings.burstRequests) ? (r.settings.burstRequests as number[]) : []
  const missing = asked.filter((n) => !r.bursts.some((b) => b.requests === n))
  const notRun = (name: string, basis: string) => judge(name, basis, null, '<=', BURST_MAX_P99_FACTOR, 'x')
  for (const requests of missing)
    out.push(notRun(`burst of ${requests} from zero: p99 vs a single cold start`, 'burst failed or not run'))
  if (!r.bursts.length && !asked.length)
    out.push(notRun('burst from zero: p99 vs a single cold start', 'burst not run'))
  for (const b of r.bursts) {
    const name = `burst of ${b.requests} from zero`
    out.push(
      judge(
        `${name}: errors`,
        `${b.requests} concurrent requests to ${b.function}`,
        b.errors,
        '<=',
        0,
        'errors',
      ),
      judge(
        `${name}: p99 vs a single cold start`,
        `p99 ${b.p99Ms} ms / ${b.singleColdBasis}`,
        b.singleColdP50Ms ? b.p99Ms / b.singleColdP50Ms : null,
        '<=',
        BURST_MAX_P99_FACTOR,
        'x',
      ),
    )
  }
  const conns = [...new Set(r.warm.map((w) => w.connections))].sort((a, c) => a - c)
  for (const c of conns) {
    const at = (t: string) => r.warm.find((w) => w.connections === c && w.target === t)
    const gw = at('gateway')
    const direct = at('direct')
    const nginx = at('nginx')
    out.push(
      judge(
        `warm path: p50 added by the gateway, ${c} connection${c === 1 ? '' : 's'}`,
        gw && direct ? `gateway p50 ${gw.p50Ms} ms - direct p50 ${direct.p50Ms} ms` : 'not run',
        gw && direct ? gw.p50Ms - direct.p50Ms : null,
        '<=',
        WARM_MAX_ADDED_P50_MS,
        'ms',
      ),
    )
    out.push(
      judge(
        `warm path: gateway throughput vs nginx, ${c} connection${c === 1 ? '' : 's'} (%)`,
        gw && nginx ? `gateway ${gw.rps} req/s / nginx ${nginx.rps} req/s` : 'not run',
        gw && nginx && nginx.rps > 0 ? (gw.rps / nginx.rps) * 100 : null,
        '>=',
        MIN_THROUGHPUT_VS_NGINX_PCT,
        '%',
      ),
    )
  }
  return out
}

/**
 * Where the cold-start time of each target function goes, from the phase medians (CRIU
 * runtimes): the profile of the slow phase a missed target asks for. Medians of phases need not
 * add up exactly to the p50.
 */
export function coldStartProfile(r: Omit<BenchResult, 'targets'>): string[] {
  const out: string[] = []
  for (const fn of coldFunctions(r)) {
    for (const { row } of policyRows(r, fn)) {
      const p = row.phasesP50Ms
      const around = p.restore - p.criu
      if (!Number.isFinite(around)) continue
      const parts = [p.queue, p.sandbox, p.restore, p.ready]
      const gateway = p.wait - parts.reduce((a, b) => a + b, 0)
      out.push(
        `${fn} ${row.runtime}: p50 ${fmt(row.p50Ms)} ms. In the gateway ${fmt(p.wait)} ms = ` +
          `queue ${fmt(p.queue)} + sandbox ${fmt(p.sandbox)} + restore ${fmt(p.restore)} ` +
          `(CRIU ${fmt(p.criu)}, the executor around it ${fmt(round(around, 1))}) + ready ${fmt(p.ready)} ` +
          `+ ${fmt(round(gateway, 1))} between them (registry, job hand-over); then upstream ${fmt(p.upstream)} ms ` +
          `(the first request, served while pages still arrive).`,
      )
    }
  }
  return out
}

/**
 * Where the warm path's CPU goes, per connection count, from the CPU each run used (bench/cpu.ts):
 * the profile of the slow phase a missed warm-path target asks for. A proxy near 1 CPU is bound
 * by its one thread (each gateway process, each nginx worker, has one); an
 * instance throttled in most of its CPU periods bounds every path to it by its quota.
 */
export function warmProfile(r: Pick<BenchResult, 'warm'>): string[] {
  const out: string[] = []
  const conns = [...new Set(r.warm.map((w) => w.connections))].sort((a, c) => a - c)
  for (const c of conns) {
    const at = (t: string) => r.warm.find((w) => w.connections === c && w.target === t)?.cpu
    const parts: string[] = []
    const describe = (name: string, cpu: ReturnType<typeof at>) => {
      if (!cpu) return
      const proxy =
        cpu.proxyCpus === undefined
          ? ''
          : `${name} ${fmt(cpu.proxyCpus)} CPUs, ${fmt(cpu.proxyUsPerRequest)} us of CPU per request; `
      const instance =
        cpu.instanceCpus === undefined
          ? ''
          : `instance ${fmt(cpu.instanceCpus)} CPUs, throttled in ${fmt(round((cpu.instanceThrottledShare ?? 0) * 100, 0))}% of its periods; `
      parts.push(`${name} runs: ${proxy}${instance}autocannon ${fmt(cpu.loadGeneratorCpus)} CPUs`)
    }
    describe('gateway', at('gateway'))
    describe('nginx', at('nginx'))
    describe('direct', at('direct'))
    if (!parts.length) continue
    const gw = at('gateway')?.proxyUsPerRequest
    const ng = at('nginx')?.proxyUsPerRequest
    const ratio =
      gw !== undefined && ng !== undefined && ng > 0
        ? ` The gateway spends ${round(gw / ng, 1)}x nginx's CPU per request.`
        : ''
    out.push(`${c} connection${c === 1 ? '' : 's'}: ${parts.join('. ')}.${ratio}`)
  }
  return out
}

/**
 * Where the burst's time went, from the answers' Server-Timing: the profile of the slow phase the
 * burst target asks for when it is missed. Empty for results without a profile.
 */
export function burstProfileLines(b: BurstRow): string[] {
  return [...(b.profile ? burstTimeLines(b, b.profile) : []), ...burstCpuLines(b)]
}

/**
 * The burst's CPU against the machine's: the work every process and the kernel did over the burst,
 * spread over all CPUs, is a floor under the wall time no scaling rule can go below.
 */
export function burstCpuLines(b: BurstRow): string[] {
  const c = b.cpu
  if (!c || !(c.wallS > 0)) return []
  const rest = round(c.busyS - c.gatewayS - c.loadGeneratorS, 3)
  const x = (ms: number) =>
    b.singleColdP50Ms ? ` = ${round(ms / b.singleColdP50Ms, 1)}x the single cold start` : ''
  const { busyShare, floorMs: machineMs } = cpuFloorOf(c)
  const floorMs = round(machineMs, 0)
  const platformMs = round(cpuFloorOf({ ...c, busyS: c.busyS - c.loadGeneratorS }).floorMs, 0)
  return [
    `The machine's ${c.cpus} CPUs were busy ${round(busyShare * 100, 0)}% of the burst's ` +
      `${round(c.wallS * 1000, 0)} ms: ${c.busyS} CPU-seconds (gateway ${c.gatewayS}, load generator ` +
      `${c.loadGeneratorS}, the rest ${rest}: executor, CRIU, the instances, the kernel). That work alone, ` +
      `spread over all ${c.cpus} CPUs, takes ${floorMs} ms${x(floorMs)}; without the load generator's, ` +
      `which a real burst's clients do elsewhere, ${platformMs} ms${x(platformMs)}.`,
  ]
}

function burstTimeLines(b: BurstRow, p: BurstProfile): string[] {
  const rest = round(p.slowest.ttfbMs - p.slowest.waitMs - p.slowest.upstreamMs, 1)
  return [
    `The slowest 1% (${p.slowest.n} answer${p.slowest.n === 1 ? '' : 's'}): ${fmt(p.slowest.ttfbMs)} ms to first byte = ` +
      `waited ${fmt(p.slowest.waitMs)} ms in the gateway for a slot + ${fmt(p.slowest.upstreamMs)} ms upstream ` +
      `+ ${fmt(rest)} ms outside both (connection, parsing, the way back).`,
    `The first instance was ready ${fmt(p.firstReadyMs)} ms after its restore was enqueued ` +
      `(queue + sandbox + restore + ready); ${p.coldAnswers} of ${b.requests - b.errors} answers waited for an instance to come up.`,
    `All answers: wait p50 ${fmt(p.waitP50Ms)} / p99 ${fmt(p.waitP99Ms)} ms, upstream p50 ${fmt(p.upstreamP50Ms)} / ` +
      `p99 ${fmt(p.upstreamP99Ms)} ms.`,
  ]
}

const suffix = (u: TargetResult['unit']) => (u === 'ms' ? ' ms' : u === 'x' ? 'x' : u === '%' ? '%' : '')
const fmt = (v: number | null | undefined, unit = '') =>
  v === null || v === undefined || !Number.isFinite(v) ? '-' : `${v}${unit}`

export function quietLine(q: QuietVerdict): string {
  return q.comparable
    ? `Quiet machine: load ${q.load1m} <= ${q.maxLoad} and no other initless, CRIU or VM process running when measuring began.`
    : `**NOT COMPARABLE: measured on a busy machine** (--allow-busy): ${describeBusy(q)}.`
}

/** The Markdown table of `targets`: measured, limit, met or missed and by how much, basis. */
export function targetsTable(targets: readonly TargetResult[]): string[] {
  return [
    '| target | measured | limit | verdict | basis |',
    '|---|---|---|---|---|',
    ...targets.map((t) => {
      const verdict = t.met === null ? 'not measured' : `**${t.met ? 'met' : 'MISSED'}**, ${t.margin}`
      return `| ${t.target} | ${fmt(t.value, suffix(t.unit))} | ${t.comparison} ${t.limit}${suffix(t.unit)} | ${verdict} | ${t.basis} |`
    }),
  ]
}

export function renderMarkdown(r: BenchResult): string {
  const m = r.machine
  const v = r.versions
  const lines = [
    '# initless benchmark',
    '',
    `${r.date} — \`${r.command}\``,
    '',
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, kernel ${m.kernel}${rcuNote(m)}, load ${m.loadAvg1m} at start. ` +
      `CRIU ${v.criu}, runc ${v.runc}, Docker ${v.docker}, Node ${v.node}` +
      `${r.warmSetup ? `, nginx ${r.warmSetup.nginxVersion}` : ''}.`,
    '',
    ...(r.quiet ? [quietLine(r.quiet), ''] : []),
    '## Targets',
    '',
    ...targetsTable(r.targets),
    '',
  ]
  if (r.coldStart.length) {
    const phaseHead = PHASES.map((p: Phase) => p).join(' | ')
    lines.push(
      '## Cold start through the gateway',
      '',
      'Request sent (fresh connection) -> first byte of the answer, no instance running. ' +
        'Phases: medians of each Server-Timing phase on its own, ms.',
      '',
      `| function | runtime | n | p50 ms | p95 ms | boot / this | ${phaseHead} | failures |`,
      `|---|---|---|---|---|---|${PHASES.map(() => '---|').join('')}---|`,
      ...r.coldStart.map(
        (c) =>
          `| ${c.function} | ${c.runtime}${r.policyRuntimes[c.function] === c.runtime ? ' (policy)' : ''} | ${c.n} | ${fmt(c.p50Ms)} | ${fmt(c.p95Ms)} | ${fmt(c.ratioToBoot, 'x')} | ${PHASES.map((p) => fmt(c.phasesP50Ms[p])).join(' | ')} | ${c.failures.length} |`,
      ),
      '',
    )
  }
  const profile = coldStartProfile(r)
  if (profile.length) {
    lines.push(
      '## Where the cold-start time goes',
      '',
      'Per target function, from the phase medians above (CRIU runtimes). CRIU is the `criu restore` ' +
        'process from start to exit; the executor around it: taking the sandbox, starting CRIU (a ' +
        'process start from Node), reading the pid, setting the CPU limit (bench/README.md, Profiles).',
      '',
      ...profile.map((l) => `- ${l}`),
      '',
    )
  }
  if (r.bursts.length) {
    lines.push(
      '## Burst from zero',
      '',
      '| function | requests | errors | restores | runtimes | p50 ms | p99 ms | max ms | single cold p50 ms |',
      '|---|---|---|---|---|---|---|---|---|',
      ...r.bursts.map(
        (b) =>
          `| ${b.function} | ${b.requests} | ${b.errors} | ${b.restores} | ${Object.entries(b.runtimes)
            .map(([k, n]) => `${k} ×${n}`)
            .join(', ')} | ${fmt(b.p50Ms)} | ${fmt(b.p99Ms)} | ${fmt(b.maxMs)} | ${fmt(b.singleColdP50Ms)} |`,
      ),
      '',
    )
    for (const b of r.bursts) {
      if (b.errorSamples.length)
        lines.push(`Errors of the ${b.requests}: ${b.errorSamples.map((e) => `\`${e}\``).join('; ')}`, '')
      const profile = burstProfileLines(b)
      if (profile.length)
        lines.push(
          `Where the time of the burst of ${b.requests} goes (each answer's Server-Timing: wait = time in the gateway until a ` +
            'slot on a ready instance, upstream = the instance to response headers):',
          '',
          ...profile.map((l) => `- ${l}`),
          '',
        )
    }
  }
  if (r.warm.length && r.warmSetup) {
    const s = r.warmSetup
    lines.push(
      '## Warm path',
      '',
      `${s.function}, one instance (${s.instanceCpus ?? '?'} CPU quota); autocannon, ${Number(r.settings.warmRounds ?? 1)} rounds of ${String(r.settings.warmDurationS)} s per target after ${String(r.settings.warmupS)} s untimed, targets interleaved; gateway with ${Number(r.settings.gatewayWorkers ?? 1)} process(es), nginx ${s.nginxVersion} with ${s.nginxWorkers} worker(s). Instances after the runs: ${s.instancesAfter}.`,
      '',
      '| connections | target | p50 ms | p99 ms | req/s | errors | proxy CPUs | proxy us/request | instance CPUs | instance throttled |',
      '|---|---|---|---|---|---|---|---|---|---|',
      ...r.warm.map(
        (w) =>
          `| ${w.connections} | ${w.target} | ${w.p50Ms} | ${w.p99Ms} | ${w.rps} | ${w.errors} | ${fmt(w.cpu?.proxyCpus)} | ${fmt(w.cpu?.proxyUsPerRequest)} | ${fmt(w.cpu?.instanceCpus)} | ${w.cpu?.instanceThrottledShare === undefined ? '-' : `${round(w.cpu.instanceThrottledShare * 100, 0)}%`} |`,
      ),
      '',
    )
    const profile = warmProfile(r)
    if (profile.length)
      lines.push(
        '## Where the warm-path CPU goes',
        '',
        "CPU used during the timed runs, from /proc and the instance's cgroup (bench/cpu.ts), averaged " +
          'over the rounds. Each gateway process has one thread: near 1 CPU per process it is the bottleneck. An instance ' +
          'throttled in most of its periods is held to its CPU quota, which then bounds that path ' +
          "(bench/README.md, Profiles: the gateway's warm path).",
        '',
        ...profile.map((l) => `- ${l}`),
        '',
      )
  }
  lines.push('## Method', '', ...r.method.map((l) => `- ${l}`), '')
  return lines.join('\n')
}
