/**
 * Burst from zero: many concurrent requests, each on its own connection, to a function with no
 * instance. The gateway holds them, starts only as many restores as the demand needs
 * (scaling.concurrency per instance, up to maxInstances) and hands the instances out as they come
 * up. Runs with the function's own restore policy and no pre-started sandbox, as the sample ships.
 */
import type { RuntimeKind } from '../shared/contracts.ts'
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
}

type Outcome = { readonly ttfbMs: number } | { readonly error: string }

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
  const started = performance.now()
  const results = await Promise.all(
    Array.from({ length: o.requests }, () =>
      probe('127.0.0.1', stack.port, { ...sample, path: `/fn/${o.fn}${sample.path}` }, 120_000).then(
        (res): Outcome =>
          res.status === 200 && res.body.includes(sample.contains)
            ? { ttfbMs: res.ttfbMs }
            : { error: `HTTP ${res.status}: ${res.body.slice(0, 200)}` },
        (err: unknown): Outcome => ({ error: err instanceof Error ? err.message : String(err) }),
      ),
    ),
  )
  const wallMs = performance.now() - started
  const ok = results.flatMap((r) => ('ttfbMs' in r ? [r.ttfbMs] : []))
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
  }
}
