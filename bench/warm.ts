/**
 * Warm path: one running instance, loaded by autocannon (as a library) three ways — straight at the
 * instance's address, through the gateway, and through nginx — at each connection count. Latency
 * percentiles come from autocannon's per-response times (float ms; its own histogram rounds to whole
 * milliseconds, too coarse for a sub-millisecond difference); requests per second from its result.
 * The three targets are run in rounds, each round in a rotated order, so a noisy spell of this
 * shared machine lands on one round of each rather than on one target's only run.
 */
import autocannon from 'autocannon'
import type { InstanceAddress } from '../shared/contracts.ts'
import { cpuMeter, findInstanceCgroup, type RunCpu } from './cpu.ts'
import { percentile, round } from './env.ts'
import { startNginx } from './nginx.ts'
import { probe } from './probe.ts'
import { SAMPLE_REQUESTS } from './samples.ts'
import type { BenchStack } from './stack.ts'

export const WARM_TARGETS = ['direct', 'gateway', 'nginx'] as const
export type WarmTarget = (typeof WARM_TARGETS)[number]

export interface WarmRow {
  readonly target: WarmTarget
  readonly connections: number
  readonly p50Ms: number
  readonly p99Ms: number
  /** Median of the rounds' requests per second. */
  readonly rps: number
  readonly rpsRounds: readonly number[]
  readonly requests: number
  /** Socket errors, timeouts and non-2xx answers. */
  readonly errors: number
  readonly durationS: number
  /**
   * Sum of response times / (connections x duration): at most ~1 when every answer was timed from
   * its own request. autocannon re-sends on a connection the server closed and then times each
   * later answer from an earlier request; far above 1 means the latencies of this row are inflated.
   */
  readonly busyRatio: number
  /** Where the CPU went during the timed runs (bench/cpu.ts). */
  readonly cpu?: WarmCpu
}

export interface WarmCpu {
  /** CPUs the proxy (gateway or nginx, with its workers) used on average; absent for direct. */
  readonly proxyCpus?: number
  /** The proxy's CPU time per request, microseconds. */
  readonly proxyUsPerRequest?: number
  /** CPUs the load generator (autocannon, in the benchmark's process) used. */
  readonly loadGeneratorCpus: number
  /** CPUs the instance used, and the share of its CPU periods that its quota throttled (0..1). */
  readonly instanceCpus?: number
  readonly instanceThrottledShare?: number
}

/** The CPU figures of a row from its runs: time-weighted over the rounds. */
export function warmCpu(runs: readonly RunCpu[], requests: number): WarmCpu {
  const sum = (pick: (r: RunCpu) => number | undefined) => {
    const values = runs.map(pick)
    return values.some((v) => v === undefined) ? undefined : values.reduce((a: number, v) => a + v!, 0)
  }
  const seconds = sum((r) => r.seconds) ?? 0
  const proxyS = sum((r) => r.proxyS)
  const instanceS = sum((r) => r.instanceS)
  const periods = sum((r) => r.periods)
  const throttled = sum((r) => r.throttled)
  const perSecond = (v: number) => round(seconds > 0 ? v / seconds : 0, 2)
  return {
    ...(proxyS !== undefined ? { proxyCpus: perSecond(proxyS) } : {}),
    ...(proxyS !== undefined && requests > 0
      ? { proxyUsPerRequest: round((proxyS * 1e6) / requests, 0) }
      : {}),
    loadGeneratorCpus: perSecond(sum((r) => r.loadGeneratorS) ?? 0),
    ...(instanceS !== undefined ? { instanceCpus: perSecond(instanceS) } : {}),
    ...(periods !== undefined && throttled !== undefined && periods > 0
      ? { instanceThrottledShare: round(throttled / periods, 2) }
      : {}),
  }
}

export interface WarmResult {
  readonly function: string
  readonly instance: InstanceAddress
  /** The instance's CPU quota (resources.cpus): it bounds what any path can reach. */
  readonly instanceCpus: number | undefined
  readonly nginxVersion: string
  readonly nginxWorkers: number
  readonly rows: readonly WarmRow[]
  /** Instances of the function after the runs: 1 unless the gateway scaled out. */
  readonly instancesAfter: number
}

export interface WarmOptions {
  readonly fn: string
  readonly connections: readonly number[]
  readonly durationS: number
  readonly warmupS: number
  /** Runs per target and connection count, targets interleaved. */
  readonly rounds: number
  readonly nginxWorkers: number
  readonly progress: (line: string) => void
  /** Registers nginx's stop as soon as it runs (signal handlers run it). */
  readonly defer: (cleanup: () => Promise<void>) => void
}

interface Load {
  readonly latencies: number[]
  readonly result: autocannon.Result
  readonly cpu?: RunCpu
}

function load(url: string, connections: number, durationS: number, method: string, body?: string) {
  return new Promise<Load>((resolve, reject) => {
    const latencies: number[] = []
    const instance = autocannon(
      { url, connections, duration: durationS, pipelining: 1, timeout: 10, method: method as 'GET', body },
      (err, result) =>
        err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve({ latencies, result }),
    )
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime)
    })
  })
}

export async function runWarmPath(
  stack: BenchStack,
  o: WarmOptions,
  manifestCpus: number | undefined,
): Promise<WarmResult> {
  const sample = SAMPLE_REQUESTS[o.fn]
  if (!sample) throw new Error(`no sample request for ${o.fn} in bench/samples.ts`)
  await stack.scaleToZero(o.fn)
  await stack.setStartOverride(o.fn, undefined)
  const first = await probe(
    '127.0.0.1',
    stack.port,
    { ...sample, path: `/fn/${o.fn}${sample.path}` },
    300_000,
  )
  if (first.status !== 200) throw new Error(`${o.fn}: HTTP ${first.status} ${first.body.slice(0, 200)}`)
  const [inst] = await stack.instances(o.fn)
  if (!inst?.address) throw new Error(`${o.fn}: no ready instance after a 200`)
  const address = inst.address
  const nginx = await startNginx(address, sample.path, o.nginxWorkers)
  o.defer(() => nginx.stop())
  try {
    const urls: Record<WarmTarget, string> = {
      direct: `http://${address.host}:${address.port}${sample.path}`,
      gateway: `http://127.0.0.1:${stack.port}/fn/${o.fn}${sample.path}`,
      nginx: `http://127.0.0.1:${nginx.port}${sample.path}`,
    }
    // Found by the network namespace that owns the instance's address; without it, no instance CPU.
    const cgroup = findInstanceCgroup(address)
    if (!cgroup) o.progress(`[warm ${o.fn}] instance cgroup not found: no instance CPU figures`)
    const proxyPids: Record<WarmTarget, number | undefined> = {
      direct: undefined,
      gateway: stack.gateway.child.pid,
      nginx: nginx.pid,
    }
    const rows: WarmRow[] = []
    for (const connections of o.connections) {
      const runs = new Map<WarmTarget, Load[]>(WARM_TARGETS.map((t) => [t, []]))
      for (let r = 0; r < o.rounds; r++) {
        for (let i = 0; i < WARM_TARGETS.length; i++) {
          const target = WARM_TARGETS[(i + r) % WARM_TARGETS.length]!
          // Untimed first: JIT, connection pools (the gateway's and nginx's upstream keep-alive).
          await load(urls[target], connections, o.warmupS, sample.method, sample.body)
          const stop = cpuMeter(proxyPids[target], cgroup)
          const run = await load(urls[target], connections, o.durationS, sample.method, sample.body)
          runs.get(target)!.push({ ...run, cpu: stop() })
          o.progress(
            `[warm ${o.fn}] round ${r + 1}/${o.rounds} ${target} c=${connections}: ${round(run.result.requests.average, 0)} req/s`,
          )
        }
      }
      for (const target of WARM_TARGETS) {
        const done = runs.get(target)!
        const latencies = done.flatMap((d) => d.latencies)
        const rpsRounds = done.map((d) => round(d.result.requests.average, 0))
        const durationS = done.reduce((a, d) => a + d.result.duration, 0)
        const requests = done.reduce((a, d) => a + d.result.requests.total, 0)
        const row: WarmRow = {
          target,
          connections,
          p50Ms: round(percentile(latencies, 50), 3),
          p99Ms: round(percentile(latencies, 99), 3),
          rps: round(percentile(rpsRounds, 50), 0),
          rpsRounds,
          requests,
          errors: done.reduce((a, d) => a + d.result.errors + d.result.non2xx, 0),
          durationS,
          busyRatio: round(latencies.reduce((a, b) => a + b, 0) / (connections * durationS * 1000), 3),
          cpu: warmCpu(
            done.map((d) => d.cpu!),
            requests,
          ),
        }
        if (row.busyRatio > 1.1)
          o.progress(
            `[warm ${o.fn}] WARNING: ${target} c=${connections}: latencies inflated (busy ratio ${row.busyRatio})`,
          )
        rows.push(row)
        o.progress(
          `[warm ${o.fn}] ${target} c=${connections}: p50 ${row.p50Ms} ms, p99 ${row.p99Ms} ms, ${row.rps} req/s (rounds: ${rpsRounds.join(', ')}), ${row.errors} errors`,
        )
      }
    }
    const instancesAfter = (await stack.instances(o.fn)).length
    return {
      function: o.fn,
      instance: address,
      instanceCpus: manifestCpus,
      nginxVersion: nginx.version,
      nginxWorkers: o.nginxWorkers,
      rows,
      instancesAfter,
    }
  } finally {
    await nginx.stop()
    await stack.scaleToZero(o.fn).catch(() => undefined)
  }
}
