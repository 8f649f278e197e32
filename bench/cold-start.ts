/**
 * Cold-start matrix through the gateway: for each function and runtime, the time from sending a
 * request to the first byte of its answer, with no instance running. Each run's runtime is forced
 * with the gateway's start override (PUT /admin/functions/<fn>/runtime), and checked afterwards
 * against the instance's registry record (runtime) and the executor's 'instance ready' log (pooled).
 */
import type { RuntimeKind } from '../shared/contracts.ts'
import { parseServerTiming } from '../shared/server-timing.ts'
import { medianOf, percentile, round } from './env.ts'
import { probe } from './probe.ts'
import { SAMPLE_REQUESTS } from './samples.ts'
import type { BenchStack } from './stack.ts'

/** What the matrix compares. `lazy+pool`: lazy restore into a pre-started sandbox (scaling.poolSize 1). */
export const VARIANTS = ['boot', 'docker', 'eager', 'lazy', 'lazy+pool'] as const
export type Variant = (typeof VARIANTS)[number]

export const overrideOf = (v: Variant): { runtime: RuntimeKind; noPool: boolean } =>
  v === 'lazy+pool' ? { runtime: 'lazy', noPool: false } : { runtime: v, noPool: true }

/** Server-Timing metrics of a cold answer, in the order the gateway writes them. */
export const PHASES = ['wait', 'queue', 'sandbox', 'restore', 'criu', 'ready', 'upstream'] as const
export type Phase = (typeof PHASES)[number]

export interface ColdRun {
  readonly ttfbMs: number
  readonly phases: Readonly<Record<Phase, number>>
}

export interface ColdStartRow {
  readonly function: string
  readonly runtime: Variant
  readonly n: number
  readonly p50Ms: number
  readonly p95Ms: number
  readonly minMs: number
  readonly maxMs: number
  /** boot's p50 / this p50: how many times faster than a plain container start. */
  readonly ratioToBoot: number | null
  /** Median of each Server-Timing phase on its own (they need not add up to p50Ms). */
  readonly phasesP50Ms: Readonly<Record<Phase, number>>
  readonly failures: readonly string[]
  readonly samplesMs: readonly number[]
  /** Each run's Server-Timing phases, in run order (what an outlier spent its time on). */
  readonly samplesPhasesMs: readonly Record<Phase, number>[]
}

export interface ColdStartOptions {
  readonly functions: readonly string[]
  readonly variants: readonly Variant[]
  readonly n: number
  /** Pause once nothing runs before the next measured request (pool refill, page-cache writeback). */
  readonly settleMs: number
  readonly progress: (line: string) => void
  /** Aborted (SIGINT/SIGTERM): stop between runs instead of recording failures. */
  readonly signal?: AbortSignal
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms))
const shuffled = <T>(xs: readonly T[]): T[] => {
  const out = [...xs]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[out[i], out[j]] = [out[j]!, out[i]!]
  }
  return out
}

/** One cold request of `fn` with `variant`, verified; the function is at zero before and after. */
export async function coldRun(
  stack: BenchStack,
  fn: string,
  variant: Variant,
  settleMs: number,
): Promise<ColdRun> {
  const sample = SAMPLE_REQUESTS[fn]
  if (!sample) throw new Error(`no sample request for ${fn} in bench/samples.ts`)
  const want = overrideOf(variant)
  await stack.scaleToZero(fn)
  await stack.setStartOverride(fn, want)
  await delay(settleMs)
  const mark = stack.executor.mark()
  const res = await probe('127.0.0.1', stack.port, { ...sample, path: `/fn/${fn}${sample.path}` }, 300_000)
  if (res.status !== 200 || !res.body.includes(sample.contains))
    throw new Error(`HTTP ${res.status}: ${res.body.slice(0, 300)}`)
  const timing = parseServerTiming(res.headers['server-timing'])
  if (!timing.has('cold'))
    throw new Error(`not a cold start: Server-Timing '${String(res.headers['server-timing'])}'`)
  // Outside the timed part: the instance that answered really ran the runtime asked for.
  const [inst, ...more] = await stack.instances(fn)
  if (!inst || more.length) throw new Error(`expected one instance, found ${1 + more.length}`)
  if (inst.runtime !== want.runtime) throw new Error(`asked for ${want.runtime}, ran ${inst.runtime}`)
  const ready = await stack.executor.waitForLog(
    (r) => r.msg === 'instance ready' && r.id === inst.id,
    10_000,
    mark,
  )
  if (ready.pooled !== !want.noPool)
    throw new Error(`pooled=${String(ready.pooled)}, expected ${String(!want.noPool)}`)
  const phases = Object.fromEntries(PHASES.map((p) => [p, timing.get(p) ?? NaN])) as Record<Phase, number>
  return { ttfbMs: res.ttfbMs, phases }
}

export function summarizeCold(
  fn: string,
  variant: Variant,
  runs: readonly ColdRun[],
  failures: readonly string[],
): Omit<ColdStartRow, 'ratioToBoot'> {
  const ttfb = runs.map((r) => r.ttfbMs)
  const phase = (p: Phase) => medianOf(runs.map((r) => r.phases[p]))
  return {
    function: fn,
    runtime: variant,
    n: runs.length,
    p50Ms: round(percentile(ttfb, 50)),
    p95Ms: round(percentile(ttfb, 95)),
    minMs: round(runs.length ? Math.min(...ttfb) : NaN),
    maxMs: round(runs.length ? Math.max(...ttfb) : NaN),
    phasesP50Ms: Object.fromEntries(PHASES.map((p) => [p, phase(p)])) as Record<Phase, number>,
    failures,
    samplesMs: ttfb.map((t) => round(t, 2)),
    samplesPhasesMs: runs.map(
      (r) => Object.fromEntries(PHASES.map((p) => [p, round(r.phases[p], 1)])) as Record<Phase, number>,
    ),
  }
}

/** Adds ratioToBoot: boot's p50 over each row's p50 (same function). */
export function withRatios(rows: readonly Omit<ColdStartRow, 'ratioToBoot'>[]): ColdStartRow[] {
  return rows.map((r) => {
    const boot = rows.find((b) => b.function === r.function && b.runtime === 'boot')?.p50Ms
    const ratio = boot !== undefined && Number.isFinite(boot) && r.p50Ms > 0 ? round(boot / r.p50Ms, 2) : null
    return { ...r, ratioToBoot: ratio }
  })
}

/**
 * For each function: one untimed round (page cache, unpacked rootfs, the `docker` runtime's
 * template container), then `n` rounds, each running every variant once in a random order so the
 * machine's noise hits them alike.
 */
export async function runColdStartMatrix(stack: BenchStack, o: ColdStartOptions): Promise<ColdStartRow[]> {
  const rows: Omit<ColdStartRow, 'ratioToBoot'>[] = []
  for (const fn of o.functions) {
    const runs = new Map<Variant, ColdRun[]>(o.variants.map((v) => [v, []]))
    const failures = new Map<Variant, string[]>(o.variants.map((v) => [v, []]))
    const attempt = async (v: Variant, isWarmup: boolean) => {
      o.signal?.throwIfAborted()
      try {
        const r = await coldRun(stack, fn, v, o.settleMs)
        if (!isWarmup) runs.get(v)!.push(r)
        return r
      } catch (err) {
        o.signal?.throwIfAborted()
        const msg = `${isWarmup ? 'warm-up: ' : ''}${err instanceof Error ? err.message : String(err)}`
        failures.get(v)!.push(msg)
        o.progress(`[cold ${fn}] ${v} FAILED: ${msg.split('\n')[0]}`)
        return undefined
      }
    }
    o.progress(`[cold ${fn}] untimed round (${o.variants.join(', ')})`)
    for (const v of o.variants) await attempt(v, true)
    for (let i = 0; i < o.n; i++) {
      const line: string[] = []
      for (const v of shuffled(o.variants)) {
        const r = await attempt(v, false)
        line.push(`${v} ${r ? `${r.ttfbMs.toFixed(1)}` : 'fail'}`)
      }
      o.progress(`[cold ${fn}] round ${i + 1}/${o.n}: ${line.join(', ')} ms`)
    }
    await stack.scaleToZero(fn)
    await stack.setStartOverride(fn, undefined)
    for (const v of o.variants) rows.push(summarizeCold(fn, v, runs.get(v)!, failures.get(v)!))
  }
  return withRatios(rows)
}
