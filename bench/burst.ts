/**
 * Burst from zero: many concurrent requests, each on its own connection, to a function with no
 * instance. The gateway holds them, starts only as many restores as the demand needs
 * (scaling.concurrency per instance, up to maxInstances) and hands the instances out as they come
 * up. Runs with the function's own restore policy and no pre-started sandbox, as the sample ships.
 */
import type { RuntimeKind } from '../shared/contracts.ts'
import { parseServerTiming } from '../shared/server-timing.ts'
import { machineCpuMeter, type MachineCpu } from './cpu.ts'
import { percentile, round } from './env.ts'
import { probe } from './probe.ts'
import { SAMPLE_REQUESTS } from './samples.ts'
import type { BenchStack } from './stack.ts'

export interface BurstResult {
  readonly function: string
  readonly requests: number
  /** Non-200 answers, wrong bodies, socket errors and timeouts. */
  readonly errors: number
  readonly errorSamples: readonly string[]
  /** Restores the gateway enqueued for the burst ('restore enqueued' log records). */
  readonly restores: number
  /** Runtime of the instances the burst brought up (from the registry), by count. */
  readonly runtimes: Readonly<Partial<Record<RuntimeKind, number>>>
  /** Time to first byte of each answered request. */
  readonly p50Ms: number
  readonly p99Ms: number
  readonly maxMs: number
  /** Request sent -> last answer, the whole burst. */
  readonly wallMs: number
  /** Where the answers' time went, from their Server-Timing (absent in older results). */
  readonly profile?: BurstProfile
  /** The machine's CPU over the burst (absent in older results). */
  readonly cpu?: MachineCpu
}

/** The gateway's wait for a slot and the instance's time to response headers, per answer. */
export interface BurstProfile {
  readonly waitP50Ms: number
  readonly waitP99Ms: number
  readonly upstreamP50Ms: number
  readonly upstreamP99Ms: number
  /** Answers from an instance that came up while they waited. */
  readonly coldAnswers: number
  /** The first instance: restore enqueued -> ready (queue + sandbox + restore + ready), ms. */
  readonly firstReadyMs?: number
  /** The slowest 1% of the answers (at least one): mean time to first byte, wait and upstream. */
  readonly slowest: {
    readonly n: number
    readonly ttfbMs: number
    readonly waitMs: number
    readonly upstreamMs: number
  }
}

interface Answer {
  readonly ttfbMs: number
  readonly waitMs: number
  readonly upstreamMs: number
  /** queue + sandbox + restore + ready of the instance, for an answer that waited for it. */
  readonly readyAfterMs?: number
}

type Outcome = Answer | { readonly error: string }

/** An answer's part of the profile, from its Server-Timing header. */
export function answerTiming(ttfbMs: number, serverTiming: string | string[] | undefined): Answer {
  const t = parseServerTiming(serverTiming)
  const phases = ['queue', 'sandbox', 'restore', 'ready'].flatMap((p) => {
    const v = t.get(p)
    return v === undefined ? [] : [v]
  })
  return {
    ttfbMs,
    waitMs: t.get('wait') ?? 0,
    upstreamMs: t.get('upstream') ?? NaN,
    ...(t.has('cold') && phases.length === 4 ? { readyAfterMs: phases.reduce((a, v) => a + v, 0) } : {}),
  }
}

/** The burst's profile from its answers. */
export function burstProfile(answers: readonly Answer[]): BurstProfile | undefined {
  if (!answers.length) return undefined
  const col = (pick: (a: Answer) => number) => answers.map(pick).filter(Number.isFinite)
  const mean = (xs: readonly number[]) => round(xs.reduce((a, b) => a + b, 0) / xs.length)
  const slow = [...answers]
    .sort((a, b) => b.ttfbMs - a.ttfbMs)
    .slice(0, Math.max(1, Math.ceil(answers.length / 100)))
  const ready = col((a) => a.readyAfterMs ?? NaN)
  const at = (pick: (a: Answer) => number, p: number) => round(percentile(col(pick), p))
  return {
    waitP50Ms: at((a) => a.waitMs, 50),
    waitP99Ms: at((a) => a.waitMs, 99),
    upstreamP50Ms: at((a) => a.upstreamMs, 50),
    upstreamP99Ms: at((a) => a.upstreamMs, 99),
    coldAnswers: ready.length,
    ...(ready.length ? { firstReadyMs: round(Math.min(...ready)) } : {}),
    slowest: {
      n: slow.length,
      ttfbMs: mean(slow.map((a) => a.ttfbMs)),
      waitMs: mean(slow.map((a) => a.waitMs)),
      upstreamMs: mean(slow.map((a) => a.upstreamMs).filter(Number.isFinite)),
    },
  }
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function runBurst(
  stack: BenchStack,
  o: { fn: string; requests: number; settleMs: number; progress: (line: string) => void },
): Promise<BurstResult> {
  const sample = SAMPLE_REQUESTS[o.fn]
  if (!sample) throw new Error(`no sample request for ${o.fn} in bench/samples.ts`)
  await stack.scaleToZero(o.fn)
  await stack.setStartOverride(o.fn, { noPool: true })
  await delay(o.settleMs)
  o.progress(`[burst ${o.fn}] ${o.requests} concurrent requests from zero`)
  const mark = stack.gateway.mark()
  const cpu = machineCpuMeter(stack.gateway.child.pid)
  const started = performance.now()
  const results = await Promise.all(
    Array.from({ length: o.requests }, () =>
      probe('127.0.0.1', stack.port, { ...sample, path: `/fn/${o.fn}${sample.path}` }, 120_000).then(
        (res): Outcome =>
          res.status === 200 && res.body.includes(sample.contains)
            ? answerTiming(res.ttfbMs, res.headers['server-timing'])
            : { error: `HTTP ${res.status}: ${res.body.slice(0, 200)}` },
        (err: unknown): Outcome => ({ error: err instanceof Error ? err.message : String(err) }),
      ),
    ),
  )
  const wallMs = performance.now() - started
  const cpuUsed = cpu()
  const answers = results.flatMap((r) => ('ttfbMs' in r ? [r] : []))
  const ok = answers.map((a) => a.ttfbMs)
  const errors = results.flatMap((r) => ('error' in r ? [r.error] : []))
  const restores = stack.gateway
    .records(mark)
    .filter((r) => r.msg === 'restore enqueued' && r.fn === o.fn).length
  const runtimes: Partial<Record<RuntimeKind, number>> = {}
  for (const inst of await stack.instances(o.fn))
    if (inst.runtime) runtimes[inst.runtime] = (runtimes[inst.runtime] ?? 0) + 1
  await stack.scaleToZero(o.fn)
  await stack.setStartOverride(o.fn, undefined)
  return {
    function: o.fn,
    requests: o.requests,
    errors: errors.length,
    errorSamples: [...new Set(errors)].slice(0, 5),
    restores,
    runtimes,
    p50Ms: round(percentile(ok, 50)),
    p99Ms: round(percentile(ok, 99)),
    maxMs: round(ok.length ? Math.max(...ok) : NaN),
    wallMs: round(wallMs),
    ...(answers.length ? { profile: burstProfile(answers)! } : {}),
    cpu: cpuUsed,
  }
}
