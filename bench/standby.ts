/**
 * Frozen-standby benchmark (scaling.standby): request to first byte through the gateway when the
 * only instance is a frozen standby (the gateway claims it, its executor thaws it), against a warm
 * request on the same instance, plus the memory a frozen instance holds and the CPU it uses while
 * frozen. Its own row: never mixed into the cold-start numbers.
 *
 *   node --import tsx bench/standby.ts [--n 10] [--allow-busy]
 *
 * Starts its own isolated stack (cli/launcher.ts), deploys a copy of hello-node with `standby: 1`
 * (`bench-standby`), and per sample: waits for the frozen instance, reads its cgroup, sends one
 * request (thawed) and one more (warm), then scales to zero so the next sample finds a new standby
 * only. Writes bench/results/standby-<date>.json and prints p50/p95.
 */
import { existsSync } from 'node:fs'
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { deployFunction } from '../cli/deploy-client.ts'
import { isolatedStack, startStack } from '../cli/launcher.ts'
import type { InstanceRecord } from '../shared/contracts.ts'
import { packageRoot } from '../shared/package-root.ts'
import { benchEnvironment, percentile, round } from './env.ts'
import { passQuietGate, QUIET_ARGS } from './quiet.ts'
import { judge, THAW_MAX_MS } from './report.ts'

const FN = 'bench-standby'
const CGROUP = '/sys/fs/cgroup'
const { values } = parseArgs({ options: { n: { type: 'string', default: '10' }, ...QUIET_ARGS } })
const n = Number(values.n)
// Before the benchmark's own stack starts: its executor and gateway would count as busy.
const quiet = await passQuietGate('bench/standby', values)
const redisUrl = process.env.INITLESS_REDIS_URL ?? 'redis://127.0.0.1:6379'

/** Request to the first byte of the response (its status line and headers), in ms. */
function firstByteMs(port: number): Promise<{ ms: number; timing: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now()
    const req = request({ host: '127.0.0.1', port, path: `/fn/${FN}/`, agent: false }, (res) => {
      const ms = performance.now() - t0
      res.resume()
      res.on('end', () =>
        res.statusCode === 200
          ? resolve({ ms, timing: String(res.headers['server-timing'] ?? '') })
          : reject(new Error(`HTTP ${res.statusCode}`)),
      )
    })
    req.on('error', reject)
    req.end()
  })
}

/** The frozen instance's cgroup: memory now (bytes) and CPU used (ns), v1 or v2. */
async function cgroupOf(id: string): Promise<{ memoryBytes: number; cpuNs: number }> {
  const read = async (path: string) => (await readFile(path, 'utf8')).trim()
  if (existsSync(join(CGROUP, 'memory', 'initless', id)))
    return {
      memoryBytes: Number(await read(join(CGROUP, 'memory', 'initless', id, 'memory.usage_in_bytes'))),
      cpuNs: Number(await read(join(CGROUP, 'cpuacct', 'initless', id, 'cpuacct.usage'))),
    }
  const stat = await read(join(CGROUP, 'initless', id, 'cpu.stat'))
  return {
    memoryBytes: Number(await read(join(CGROUP, 'initless', id, 'memory.current'))),
    cpuNs: Number(/^usage_usec (\d+)$/m.exec(stat)?.[1] ?? 0) * 1000,
  }
}

const dir = await mkdtemp(join(tmpdir(), 'initless-bench-standby-'))
const fnDir = join(dir, FN)
await cp(join(packageRoot(), 'functions', 'hello-node'), fnDir, { recursive: true })
const manifestFile = join(fnDir, 'function.yaml')
await writeFile(
  manifestFile,
  (await readFile(manifestFile, 'utf8'))
    .replace('name: hello-node', `name: ${FN}`)
    .replace('  maxInstances: 5', '  maxInstances: 5\n  standby: 1'),
)
const iso = await isolatedStack('bench-standby', redisUrl)
const stack = await startStack({
  env: {
    ...iso.env,
    INITLESS_FUNCTIONS_DIR: join(dir, 'none'),
    INITLESS_LOG_LEVEL: 'warn',
    INITLESS_REAP_INTERVAL: '200ms',
  },
  adminToken: iso.adminToken,
  cleanup: { redisUrl, patterns: iso.redisKeys },
})
const frozenOf = (l: readonly InstanceRecord[]) => l.filter((r) => r.state === 'frozen' && r.address)
try {
  await deployFunction({ url: stack.url, token: iso.adminToken }, { name: FN, dir: fnDir })
  const rows: {
    thawedMs: number
    warmMs: number
    frozenMemoryBytes: number
    heldMemoryBytes: number
    frozenCpuNs: number
    timing: string
  }[] = []
  for (let i = 0; i < n; i++) {
    const list = await stack.waitForInstances(FN, (l) => l.length === 1 && frozenOf(l).length === 1, 120_000)
    const standby = list[0]!
    // Held while frozen: what it was frozen with (registry), and now (a lazy restore's daemon
    // pushes the rest of the pages into the frozen process).
    const before = await cgroupOf(standby.id)
    await new Promise((r) => setTimeout(r, 500))
    const held = await cgroupOf(standby.id)
    const thawed = await firstByteMs(iso.port)
    const warm = await firstByteMs(iso.port)
    if (!thawed.timing.startsWith('thawed')) throw new Error(`not served thawed: ${thawed.timing}`)
    rows.push({
      thawedMs: thawed.ms,
      warmMs: warm.ms,
      frozenMemoryBytes: standby.memoryBytes ?? 0,
      heldMemoryBytes: held.memoryBytes,
      frozenCpuNs: held.cpuNs - before.cpuNs,
      timing: thawed.timing,
    })
    const res = await stack.admin('POST', `/functions/${FN}/scale`, { instances: 0 })
    if (res.status !== 202) throw new Error(`scale to zero answered ${res.status}`)
    await stack.waitForInstances(FN, (l) => !l.some((r) => r.id === standby.id), 30_000)
  }
  const stats = (xs: number[]) => ({ p50: round(percentile(xs, 50), 2), p95: round(percentile(xs, 95), 2) })
  const MiB = 1024 * 1024
  const result = {
    ...benchEnvironment(['node --import tsx bench/standby.ts', ...process.argv.slice(2)]),
    quiet,
    n,
    function: 'hello-node',
    thawToFirstByteMs: stats(rows.map((r) => r.thawedMs)),
    warmFirstByteMs: stats(rows.map((r) => r.warmMs)),
    memoryMiB: {
      atFreeze: round(
        percentile(
          rows.map((r) => r.frozenMemoryBytes / MiB),
          50,
        ),
      ),
      held: round(
        percentile(
          rows.map((r) => r.heldMemoryBytes / MiB),
          50,
        ),
      ),
    },
    cpuWhileFrozenNs: Math.max(...rows.map((r) => r.frozenCpuNs)),
    rows,
  }
  const target = judge(
    'frozen standby: thaw to first byte, p50',
    `p50 of ${n} thawed requests`,
    result.thawToFirstByteMs.p50,
    '<=',
    THAW_MAX_MS,
    'ms',
  )
  await mkdir(join(packageRoot(), 'bench', 'results'), { recursive: true })
  await writeFile(
    join(packageRoot(), 'bench', 'results', `standby-${result.date.replace(/[:.]/g, '-')}.json`),
    `${JSON.stringify({ ...result, targets: [target] }, null, 2)}\n`,
  )
  process.stdout.write(
    `standby (${result.function}, n=${n}${quiet.comparable ? '' : ', machine busy: not comparable'}): ` +
      `thaw to first byte p50 ${result.thawToFirstByteMs.p50} ms, p95 ${result.thawToFirstByteMs.p95} ms; ` +
      `warm p50 ${result.warmFirstByteMs.p50} ms; memory held ${result.memoryMiB.held} MiB ` +
      `(${result.memoryMiB.atFreeze} MiB at freeze); CPU while frozen ${result.cpuWhileFrozenNs} ns\n` +
      `target <= ${THAW_MAX_MS} ms: ${target.met ? 'met' : 'MISSED'}, ${target.margin}\n`,
  )
} finally {
  await stack.admin('DELETE', `/functions/${FN}`).catch(() => undefined)
  await new Promise((r) => setTimeout(r, 2000))
  await stack.stop()
  await rm(dir, { recursive: true, force: true })
}
