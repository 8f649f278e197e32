/**
 * Lifecycle benchmark: how long a rollback takes (admin call to answer), and how long after it two
 * gateways on one Redis each answer with the other version (the switch delay between them).
 *
 *   node --import tsx bench/lifecycle.ts [--n 10]
 *
 * Starts its own isolated stack (cli/launcher.ts) plus a second gateway, deploys two versions of
 * a copy of hello-node (`bench-life`), then alternates rollbacks between them. Writes
 * bench/results/lifecycle-<date>.json and prints the medians.
 */
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { deployFunction } from '../cli/deploy-client.ts'
import { freePort, isolatedStack, startProcess, startStack } from '../cli/launcher.ts'
import { packageRoot } from '../shared/package-root.ts'
import { benchEnvironment } from './env.ts'
import { passQuietGate, QUIET_ARGS } from './quiet.ts'

const FN = 'bench-life'
const { values } = parseArgs({ options: { n: { type: 'string', default: '10' }, ...QUIET_ARGS } })
const n = Number(values.n)
// Before the benchmark's own stack starts: its executor and gateway would count as busy.
const quiet = await passQuietGate('bench/lifecycle', values)
const redisUrl = process.env.INITLESS_REDIS_URL ?? 'redis://127.0.0.1:6379'

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length ? (s[Math.floor((s.length - 1) / 2)] ?? 0) : 0
}

async function writeVersion(dir: string, tag: string) {
  const fnDir = join(dir, FN)
  await rm(fnDir, { recursive: true, force: true })
  await cp(join(packageRoot(), 'functions', 'hello-node'), fnDir, { recursive: true })
  const manifest = join(fnDir, 'function.yaml')
  await writeFile(manifest, (await readFile(manifest, 'utf8')).replace('name: hello-node', `name: ${FN}`))
  const server = join(fnDir, 'server.js')
  await writeFile(
    server,
    (await readFile(server, 'utf8')).replace(
      "message: 'hello from node'",
      `message: 'hello from node', tag: '${tag}'`,
    ),
  )
  return { name: FN, dir: fnDir }
}

async function tagAt(port: number): Promise<string | undefined> {
  const res = await fetch(`http://127.0.0.1:${port}/fn/${FN}/`)
  const text = await res.text()
  return res.ok ? (JSON.parse(text) as { tag?: string }).tag : `HTTP ${res.status} ${text.slice(0, 200)}`
}

const dir = await mkdtemp(join(tmpdir(), 'initless-bench-life-'))
const iso = await isolatedStack('bench-life', redisUrl)
const env = {
  ...iso.env,
  INITLESS_FUNCTIONS_DIR: join(dir, 'none'),
  INITLESS_LOG_LEVEL: 'warn',
  INITLESS_DRAIN_GRACE: '1s',
  INITLESS_REGISTRY_REFRESH: '500ms',
}
const stack = await startStack({
  env,
  adminToken: iso.adminToken,
  cleanup: { redisUrl, patterns: iso.redisKeys },
})
const port2 = await freePort()
const second = startProcess('gateway-2', 'gateway', {
  env: { ...env, INITLESS_GATEWAY_PORT: String(port2), INITLESS_LOG_LEVEL: 'info' },
})
await second.waitForLog((r) => r.msg === 'gateway listening', 30_000)
try {
  const admin = { url: stack.url, token: iso.adminToken }
  const v1 = await deployFunction(admin, await writeVersion(dir, 'v1'))
  const v2 = await deployFunction(admin, await writeVersion(dir, 'v2'))
  const tagOf: Record<string, string> = { [v1.version]: 'v1', [v2.version]: 'v2' }
  for (let i = 0; i < 50 && (await tagAt(port2).catch(() => undefined)) !== 'v2'; i++)
    await new Promise((r) => setTimeout(r, 100))
  const rows: { rollbackMs: number; switchMs: [number, number]; betweenMs: number }[] = []
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    // Back and forth: the version that is not active (a plain rollback only goes back in time).
    const target = i % 2 === 0 ? v1.version : v2.version
    const res = await stack.admin<{ version: string }>('POST', `/functions/${FN}/rollback`, {
      version: target,
    })
    if (res.status !== 200) throw new Error(`rollback answered ${res.status}: ${JSON.stringify(res.body)}`)
    const rollbackMs = performance.now() - t0
    const want = tagOf[res.body.version]
    const seen = async (port: number) => {
      let last: string | undefined
      for (;;) {
        last = await tagAt(port)
        if (last === want) return performance.now() - t0
        if (performance.now() - t0 > 10_000)
          throw new Error(
            `gateway on ${port} never switched to ${want} (last: ${last ?? 'an error'})\n` +
              `${second.output().slice(-3000)}\n${stack.logs(30)}`,
          )
      }
    }
    const [a, b] = await Promise.all([seen(iso.port), seen(port2)])
    rows.push({ rollbackMs, switchMs: [a, b], betweenMs: Math.abs(a - b) })
    // Let the previous version's instances drain before the next switch.
    await new Promise((r) => setTimeout(r, 1500))
  }
  const result = {
    ...benchEnvironment(['node --import tsx bench/lifecycle.ts', ...process.argv.slice(2)]),
    quiet,
    n,
    rollbackMs: {
      p50: median(rows.map((r) => r.rollbackMs)),
      max: Math.max(...rows.map((r) => r.rollbackMs)),
    },
    betweenGatewaysMs: {
      p50: median(rows.map((r) => r.betweenMs)),
      max: Math.max(...rows.map((r) => r.betweenMs)),
    },
    rows,
  }
  await mkdir(join(packageRoot(), 'bench', 'results'), { recursive: true })
  await writeFile(
    join(packageRoot(), 'bench', 'results', `lifecycle-${result.date.replace(/[:.]/g, '-')}.json`),
    `${JSON.stringify(result, null, 2)}\n`,
  )
  process.stdout.write(
    `rollback (admin call) p50 ${result.rollbackMs.p50.toFixed(1)} ms, max ${result.rollbackMs.max.toFixed(1)} ms\n` +
      `switch seen by both gateways: difference p50 ${result.betweenGatewaysMs.p50.toFixed(1)} ms, max ${result.betweenGatewaysMs.max.toFixed(1)} ms\n`,
  )
} finally {
  await second.stop()
  await stack.admin('DELETE', `/functions/${FN}`).catch(() => undefined)
  await new Promise((r) => setTimeout(r, 3000))
  await stack.stop()
  await rm(dir, { recursive: true, force: true })
}
