/**
 * The system under test: the REAL executor and gateway processes, started by the stack launcher
 * (cli/launcher.ts, as `initless up` and the integration tests start them), isolated from
 * everything else on the machine by their own queue, registry key prefix, host id, port, state dir
 * and functions dir.
 *
 * The functions dir is generated: a copy of each sample folder whose manifest differs only in what
 * the benchmark needs (see benchManifest). Its own state dir keeps those snapshots apart from the
 * default one: a snapshot's key hashes the manifest, and a new bake of a function retires the
 * previous snapshot of that function, so sharing /var/lib/initless would make the benchmark and any
 * other executor on the machine re-bake each other's snapshots. The Dockerfiles ignore
 * function.yaml, so the images are Docker's cached builds of the samples (same image ids).
 */
import { execFile } from 'node:child_process'
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml'
import { isolatedStack, startStack, type LogRecord, type ManagedProcess } from '../cli/launcher.ts'
import { DEFAULT_RUNC_ROOT as RUNC_ROOT } from '../executor/config.ts'
import { instanceCgroupsIn } from '../executor/adapters/cgroups.ts'
import type { StartOverride } from '../gateway/instance-pool.ts'
import type { InstanceRecord } from '../shared/contracts.ts'
import { MANIFEST_FILE } from '../shared/manifest.ts'
import { packageRoot } from '../shared/package-root.ts'

const run = promisify(execFile)
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms))

export interface BenchStackOptions {
  /** Sample functions (folders under functions/) to serve. */
  readonly functions: readonly string[]
  /** This function gets `scaling.concurrency: 1000`: the warm-path load stays on one instance. */
  readonly warmFunction?: string
  /** State dir of the benchmark's executor (snapshots and unpacked images persist between runs). */
  readonly stateDir: string
  /** Gateway processes (INITLESS_GATEWAY_WORKERS). Default 1. */
  readonly gatewayWorkers?: number
  readonly redisUrl: string
  /** Building and baking on a fresh state dir takes minutes. */
  readonly prepareTimeoutMs: number
  readonly progress: (line: string) => void
  /** Registers the stack's stop as soon as its processes exist (signal handlers run it). */
  readonly defer: (cleanup: () => Promise<void>) => void
}

export interface BenchStack {
  readonly port: number
  readonly hostId: string
  readonly stateDir: string
  readonly functionsDir: string
  readonly executor: ManagedProcess
  readonly gateway: ManagedProcess
  /** An /admin call with the bearer token; the answer parsed as JSON. */
  admin<T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }>
  instances(fn: string): Promise<InstanceRecord[]>
  /** Force (or clear, with undefined) the runtime and pool use of the gateway's restores of `fn`. */
  setStartOverride(fn: string, override: StartOverride | undefined): Promise<void>
  /**
   * Scale `fn` to zero and wait until nothing of it runs: no registry record, no restored process
   * or runc container of this state dir, no running Docker container of this host (boot
   * containers and the `docker` runtime's template are stopped after their record is gone).
   */
  scaleToZero(fn: string, timeoutMs?: number): Promise<void>
  /** Stop the gateway, then the executor (which stops every instance), delete the Redis keys. */
  stop(): Promise<void>
}

/**
 * The manifest the benchmark serves, from the sample's: every function keeps one pre-started
 * sandbox (the `lazy+pool` runs use it, the others pass noPool), waits up to 300 s for an instance
 * (Docker's checkpoint API takes ~20 s per restore of flask-table, more to make its template) and is
 * never reaped for idleness mid-measurement (the benchmark scales to zero itself).
 */
export function benchManifest(raw: Record<string, unknown>, isWarmTarget: boolean): Record<string, unknown> {
  const scaling: Record<string, unknown> = {
    ...(raw.scaling as Record<string, unknown> | undefined),
    poolSize: 1,
    idleTimeout: '30m',
  }
  if (isWarmTarget) scaling.concurrency = 1000
  return {
    ...raw,
    scaling,
    timeouts: { ...(raw.timeouts as Record<string, unknown> | undefined), start: '300s' },
  }
}

async function generateFunctions(dir: string, fns: readonly string[], warm?: string): Promise<void> {
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true, mode: 0o700 })
  for (const fn of fns) {
    const src = join(packageRoot(), 'functions', fn)
    await cp(src, join(dir, fn), { recursive: true })
    const raw = parseYaml(await readFile(join(src, MANIFEST_FILE), 'utf8')) as Record<string, unknown>
    const text = stringifyYaml(benchManifest(raw, fn === warm))
    await writeFile(
      join(dir, fn, MANIFEST_FILE),
      `# Generated by bench/stack.ts from functions/${fn}/${MANIFEST_FILE}: do not edit.\n${text}`,
    )
  }
}

/** Start executor + gateway on generated functions; resolves once every function is prepared. */
export async function startBenchStack(opts: BenchStackOptions): Promise<BenchStack> {
  const functionsDir = join(opts.stateDir, 'bench-functions')
  await mkdir(opts.stateDir, { recursive: true, mode: 0o700 })
  await generateFunctions(functionsDir, opts.functions, opts.warmFunction)
  const iso = await isolatedStack('bench', opts.redisUrl)
  const { port, hostId } = iso
  // Relay build and bake progress: on a fresh state dir this is the long part.
  const relay = (line: string) => {
    if (!line.startsWith('{')) return
    const r = (() => {
      try {
        return JSON.parse(line) as LogRecord
      } catch {
        return undefined
      }
    })()
    if (typeof r?.msg === 'string' && /build|bak|snapshot|prepar|fail/i.test(r.msg))
      opts.progress(`[executor] ${r.msg}${typeof r.fn === 'string' ? ` (${r.fn})` : ''}`)
  }
  const stack = await startStack({
    env: {
      ...iso.env,
      INITLESS_STATE_DIR: opts.stateDir,
      INITLESS_FUNCTIONS_DIR: functionsDir,
      // info: the benchmark reads 'instance ready' (pooled or not) and 'restore enqueued' records.
      INITLESS_LOG_LEVEL: 'info',
      INITLESS_GATEWAY_WORKERS: String(opts.gatewayWorkers ?? 1),
      // The benchmark is one client standing in for many: a burst's 1000 connections all come
      // from 127.0.0.1, which the per-client cap (256) would answer with 429.
      INITLESS_MAX_CONNECTIONS_PER_CLIENT: '0',
    },
    adminToken: iso.adminToken,
    onLine: (name, line) => name === 'executor' && relay(line),
    prepareTimeoutMs: opts.prepareTimeoutMs,
    defer: (stop) => opts.defer(async () => void (await stop())),
    cleanup: { redisUrl: opts.redisUrl, patterns: iso.redisKeys },
    // The gateway first (it drains); then the executor stops instances, pools, templates.
    stopTimeoutMs: { gateway: 30_000, executor: 90_000 },
  })
  const admin = <T>(method: string, path: string, body?: unknown) => stack.admin<T>(method, path, body)
  const instances = (fn: string) => stack.instances(fn)
  const failed = stack.executor
    .records()
    .filter((r) => r.msg === 'prepare failed' || r.msg === 'function skipped')
  if (failed.length) {
    await stack.stop()
    throw new Error(`executor could not prepare: ${JSON.stringify(failed)}\n${stack.logs(40)}`)
  }
  const dockerRunning = async (fn: string) => {
    const out = await run('docker', [
      'ps',
      '-q',
      '--filter',
      `label=initless.host=${hostId}`,
      '--filter',
      `label=initless.fn=${fn}`,
    ]).catch(() => undefined)
    return out === undefined || out.stdout.trim() !== ''
  }
  const runcRunning = async () => {
    // `runc list` fails when a container is deleted while it lists (ours or another executor's, the
    // root is shared): then the answer is "not known to be stopped yet", and the caller asks again.
    const out = await run('runc', ['--root', RUNC_ROOT, 'list', '--format', 'json'], {
      encoding: 'utf8',
    }).catch(() => undefined)
    if (!out) return true
    const list = (JSON.parse(out.stdout.trim() || 'null') ?? []) as { bundle: string }[]
    return list.some((c) => c.bundle.startsWith(`${opts.stateDir}/`))
  }

  return {
    port,
    hostId,
    stateDir: opts.stateDir,
    functionsDir,
    executor: stack.executor,
    gateway: stack.gateway,
    admin,
    instances,
    async setStartOverride(fn, override) {
      const res = override
        ? await admin('PUT', `/functions/${fn}/runtime`, override)
        : await admin('DELETE', `/functions/${fn}/runtime`)
      if (res.status !== 200)
        throw new Error(
          `start override of ${fn}: HTTP ${res.status} ${JSON.stringify(res.body)} ` +
            '(does this gateway have PUT /admin/functions/<fn>/runtime?)',
        )
    },
    async scaleToZero(fn, timeoutMs = 60_000) {
      const res = await admin('POST', `/functions/${fn}/scale`, { instances: 0 })
      if (res.status !== 202)
        throw new Error(`scale ${fn} to zero: ${res.status} ${JSON.stringify(res.body)}`)
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const left = await instances(fn)
        const stopped = !left.length && !instanceCgroupsIn(opts.stateDir).length
        if (stopped && !(await runcRunning()) && !(await dockerRunning(fn))) return
        if (Date.now() > deadline)
          throw new Error(
            `${fn}: still running ${timeoutMs} ms after scale to zero (registry: ${JSON.stringify(left)}; ` +
              `or a restored process, or a runc container under ${opts.stateDir}, or a Docker container labelled initless.host=${hostId})`,
          )
        // A record still listed after the event (e.g. a restore finishing): ask again.
        if (left.length) await admin('POST', `/functions/${fn}/scale`, { instances: 0 })
        await delay(50)
      }
    },
    async stop() {
      await stack.stop()
    },
  }
}
