/**
 * What keys and rate limits add to a request (docs/security.md): the admission step alone, as the
 * gateway runs it, against the real Redis, measured within one run so that the machine's load
 * weighs on every variant alike. Variants, interleaved in blocks of 100:
 *   - `ping`: one Redis round trip (PING) on the same connection, the floor of any Redis check;
 *   - `key`: a function with `auth.type: key` (the in-process check: SHA-256 and a map lookup);
 *   - `limit`: a function with a per-function and a per-client rate limit (one EVALSHA of the GCRA
 *     script) that never refuses;
 *   - `key+limit`: both.
 * For each: latency percentiles, this process's CPU per call, and Redis's own CPU per call of the
 * script (INFO commandstats). Results go to bench/results/admission-<date>.json.
 *
 *   node --import tsx bench/admission.ts [--calls 5000]
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createAdmission, type AdmissionRequest } from '../gateway/access/admission.ts'
import { createKeyCache } from '../gateway/access/key-cache.ts'
import { createRedisRateLimiter } from '../gateway/access/rate-limiter.ts'
import { createRedisApiKeyStore } from '../shared/api-keys.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { manifestSchema } from '../shared/manifest.ts'
import { createRedis, deleteKeys } from '../shared/redis.ts'
import { benchEnvironment, percentile, round } from './env.ts'

const { values } = parseArgs({
  options: {
    calls: { type: 'string', default: '5000' },
    out: { type: 'string', default: join(import.meta.dirname, 'results') },
  },
})
const CALLS = Number(values.calls)
const BLOCK = 100
const REDIS_URL = process.env.INITLESS_REDIS_URL ?? 'redis://127.0.0.1:6379'
const prefix = `bench-admission-${process.pid}`

const redis = createRedis(REDIS_URL, { name: 'bench-admission' })
const logger = createSilentLogger()
const store = createRedisApiKeyStore({ redis, logger, prefix })
const cache = createKeyCache({ store, logger, refreshIntervalMs: 60_000 })
const admission = createAdmission({
  keys: cache,
  limiter: createRedisRateLimiter({ redis, prefix }),
  trustProxy: false,
  logger,
})
const manifest = (name: string, extra: object) => manifestSchema.parse({ name, port: 8080, ...extra })
const limit = { rateLimit: { perFunction: 1_000_000, perClient: 1_000_000 } }
const keyed = manifest('keyed', { auth: { type: 'key' } })
const limited = manifest('limited', limit)
const both = manifest('both', { auth: { type: 'key' }, ...limit })

async function scriptStats(): Promise<{ calls: number; usec: number }> {
  const info = await redis.info('commandstats')
  let calls = 0
  let usec = 0
  for (const m of info.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+),usec=(\d+)/g)) {
    calls += Number(m[1])
    usec += Number(m[2])
  }
  return { calls, usec }
}

try {
  await cache.start()
  const keys = {
    keyed: (await store.create('keyed')).key,
    both: (await store.create('both')).key,
  }
  await Promise.all([cache.refreshOne('keyed'), cache.refreshOne('both')])
  const req = (key?: string): AdmissionRequest => ({
    header: (n) => (n === 'x-api-key' ? key : undefined),
    remoteAddress: '127.0.0.1',
  })
  const variants: Record<string, () => Promise<unknown>> = {
    ping: () => redis.ping(),
    key: () => admission.admit(keyed, req(keys.keyed)),
    limit: () => admission.admit(limited, req()),
    'key+limit': () => admission.admit(both, req(keys.both)),
  }
  const names = Object.keys(variants)
  const samples = new Map(names.map((n) => [n, [] as number[]]))
  const cpu = new Map(names.map((n) => [n, 0]))
  // Warm up: connections, script cache, JIT.
  for (const n of names) for (let i = 0; i < 200; i++) await variants[n]!()
  const scriptBefore = await scriptStats()
  for (let done = 0; done < CALLS; done += BLOCK) {
    for (const n of names) {
      const run = variants[n]!
      const list = samples.get(n)!
      const c0 = process.cpuUsage()
      for (let i = 0; i < BLOCK; i++) {
        const t0 = performance.now()
        await run()
        list.push(performance.now() - t0)
      }
      const c = process.cpuUsage(c0)
      cpu.set(n, cpu.get(n)! + c.user + c.system)
    }
  }
  const scriptAfter = await scriptStats()
  const scriptCalls = scriptAfter.calls - scriptBefore.calls
  const results = names.map((n) => {
    const list = samples.get(n)!
    return {
      variant: n,
      calls: list.length,
      p50Ms: round(percentile(list, 50), 3),
      p95Ms: round(percentile(list, 95), 3),
      p99Ms: round(percentile(list, 99), 3),
      gatewayCpuUsPerCall: round(cpu.get(n)! / list.length, 1),
    }
  })
  const redisUsPerScript = scriptCalls ? round((scriptAfter.usec - scriptBefore.usec) / scriptCalls, 2) : NaN
  // Every GCRA call writes: with `appendfsync always` each one waits for an fsync of the AOF.
  const fsync = ((await redis.config('GET', 'appendfsync')) as string[])[1] ?? 'unknown'
  const aof = ((await redis.config('GET', 'appendonly')) as string[])[1] ?? 'unknown'
  const report = {
    environment: benchEnvironment(process.argv),
    redis: { url: REDIS_URL, appendonly: aof, appendfsync: fsync },
    results,
    redisUsPerScript,
  }
  await mkdir(values.out, { recursive: true })
  const file = join(values.out, `admission-${report.environment.date.replace(/[:.]/g, '-')}.json`)
  await writeFile(file, `${JSON.stringify(report, null, 2)}\n`)
  for (const r of results)
    process.stdout.write(
      `${r.variant.padEnd(10)} p50 ${r.p50Ms} ms  p95 ${r.p95Ms}  p99 ${r.p99Ms}  gateway CPU ${r.gatewayCpuUsPerCall} µs/call\n`,
    )
  process.stdout.write(
    `redis CPU per GCRA script: ${redisUsPerScript} µs  (load ${report.environment.machine.loadAvg1m})\n${file}\n`,
  )
} finally {
  await cache.close()
  await deleteKeys(redis, [`${prefix}:*`])
  redis.disconnect()
}
