/**
 * Restore one function's snapshot once, the way the options say, and report whether the restored
 * process answers: a diagnostic for restore paths (direct `criu restore` or `runc restore`, lazy or
 * eager) on a host where one of them fails. It uses the executor's own adapters and the snapshot
 * the executor baked (building and baking first when there is none), keeps CRIU's logs, and
 * releases the sandbox again.
 *
 *   node --import tsx scripts/restore-diag.ts --fn hello-node [--via criu|runc] [--eager]
 *     [--verbosity 4] [--arg <criu option>]... [--drop <criu option>]... [--keep <dir>]
 *
 * `--via criu` (default) runs the executor's `criu restore` command line (criu.ts criuRestoreArgs),
 * with `--arg` added and `--drop` removed (an option and, for options that take one, its value);
 * `--via runc` runs `runc restore` with the CRIU configuration the executor writes. The sandbox is
 * prepared as the executor would for the host's restore path; with INITLESS_SANDBOX_HELPER=off
 * on cgroup v2 that is a sandbox without limits or device filter. Logs go to `--keep`
 * (default /root/restore-diag/<label>): restore.log, lazy-pages.log, runc.log, output.log.
 */
import { spawn } from 'node:child_process'
import { cp, mkdir, open, readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { loadExecutorConfig } from '../executor/config.ts'
import { cgroupDirs, readCgroupLayout } from '../executor/adapters/cgroups.ts'
import {
  criuRestoreArgs,
  DESCRIPTORS_FILE,
  killLazyPages,
  type LazyPagesDaemon,
} from '../executor/adapters/criu.ts'
import { httpOnce, waitReady } from '../executor/adapters/probe.ts'
import { isProcessAlive, readPidFile } from '../executor/adapters/process.ts'
import { prepareRestoreSandbox } from '../executor/instances/instances.ts'
import { restoreIntoSandbox } from '../executor/runtimes/runtimes.ts'
import { criuExternalMounts } from '../executor/sandbox/oci-spec.ts'
import { cgroupPath, type Sandbox } from '../executor/sandbox/sandbox.ts'
import {
  createBuilder,
  createHostAdapters,
  createHostBaker,
  createSandboxes,
  createStore,
} from '../executor/wiring.ts'
import { errorMessage } from '../shared/errors.ts'
import { loadFunctionDefs } from '../shared/functions.ts'
import { createLogger } from '../shared/logger.ts'

const { values: opts } = parseArgs({
  options: {
    fn: { type: 'string', default: 'hello-node' },
    via: { type: 'string', default: 'criu' },
    eager: { type: 'boolean', default: false },
    verbosity: { type: 'string', default: '4' },
    arg: { type: 'string', multiple: true, default: [] },
    drop: { type: 'string', multiple: true, default: [] },
    keep: { type: 'string' },
    label: { type: 'string' },
  },
})
if (opts.via !== 'criu' && opts.via !== 'runc') throw new Error('--via takes criu or runc')
const lazy = !opts.eager
const label = opts.label ?? `${opts.via}-${lazy ? 'lazy' : 'eager'}-${Date.now()}`
const keep = opts.keep ?? join('/root/restore-diag', label)

const config = loadExecutorConfig(process.env)
const logger = createLogger({ level: 'warn', name: 'restore-diag' })
const adapters = createHostAdapters(config, logger)
const sandboxes = createSandboxes(config, adapters)
const host = {
  ...adapters,
  sandboxes,
  builder: createBuilder(config, adapters, logger),
  baker: createHostBaker(config, adapters, sandboxes, createStore(config), logger),
}
const fn = (await loadFunctionDefs(config.INITLESS_FUNCTIONS_DIR)).functions.find((f) => f.name === opts.fn)
if (!fn) throw new Error(`no function ${opts.fn} in ${config.INITLESS_FUNCTIONS_DIR}`)
await host.network.ensureBridge()
const { image } = await host.builder.build(fn)
const { snapshot } = await host.baker.bake(fn, image)
const path = await host.sandboxes.restorePath()
const id = `diag-${label}`.slice(0, 60)
const sb: Sandbox = await prepareRestoreSandbox(
  { stateDir: config.INITLESS_STATE_DIR, docker: host.docker, sandboxes: host.sandboxes },
  { id, fn, image, snapshot },
)
const report: Record<string, unknown> = { label, via: opts.via, lazy, restorePath: path, id }

/** The executor's `criu restore` argv for this sandbox, edited by --arg and --drop. */
async function criuArgv(daemonWorkDir: string): Promise<string[]> {
  const descriptors = JSON.parse(
    await readFile(join(snapshot.imagesDir, DESCRIPTORS_FILE), 'utf8'),
  ) as string[]
  const spec = JSON.parse(await readFile(join(sb.bundle, 'config.json'), 'utf8')) as Record<string, unknown>
  const args = criuRestoreArgs(
    {
      imagesDir: snapshot.imagesDir,
      workDir: daemonWorkDir,
      root: sb.rootfs,
      pidFile: sb.pidFile,
      netnsPath: sb.netns.path,
      cgroupRoot: cgroupPath(sb.id),
      externalMounts: sb.direct?.externalMounts ?? criuExternalMounts(spec),
      lazy,
      outputPath: sb.logFile,
      logLevel: Number(opts.verbosity),
    },
    descriptors,
  )
  for (const drop of opts.drop) {
    const i = args.indexOf(drop)
    if (i < 0) continue
    const takesValue = args[i + 1] !== undefined && !args[i + 1]!.startsWith('-')
    args.splice(i, takesValue ? 2 : 1)
  }
  return [...args, ...opts.arg.flatMap((a) => a.split(' '))]
}

/** `criu restore` run here (node's spawn), with the netns on fd 3 as the executor hands it. */
async function criuRestore(args: string[]): Promise<number | null> {
  const [netns, out] = await Promise.all([open(sb.netns.path, 'r'), open(sb.logFile, 'a')])
  try {
    const child = spawn(config.INITLESS_CRIU, args, {
      stdio: ['ignore', out.fd, out.fd, netns.fd],
      detached: true,
    })
    return await new Promise((resolve) => {
      child.on('exit', (code) => resolve(code))
      child.on('error', () => resolve(null))
    })
  } finally {
    await Promise.all([netns.close(), out.close()])
  }
}

let daemon: LazyPagesDaemon | undefined
// runc restores need the sandbox as runc's: no `direct`, so destroy deletes the runc container.
const { direct: _direct, ...runcSandbox } = sb
const used: Sandbox = opts.via === 'runc' ? runcSandbox : sb
const started = performance.now()
try {
  if (opts.via === 'criu') {
    const args = await criuArgv(sb.criuWorkDir)
    report.criuArgs = args.join(' ')
    if (lazy) daemon = await host.criu.startLazyPages(snapshot.imagesDir, sb.criuWorkDir, { verbose: true })
    const code = await criuRestore(args)
    report.criuExit = code
    if (code !== 0) throw new Error(`criu restore exited with ${code}`)
    await host.sandboxes.limitCpu(sb)
  } else {
    if (lazy) daemon = await host.criu.startLazyPages(snapshot.imagesDir, sb.criuWorkDir, { verbose: true })
    await restoreIntoSandbox(host, runcSandbox, snapshot.imagesDir, lazy, daemon)
  }
  report.restoreMs = Math.round(performance.now() - started)
  const pid = await readPidFile(sb.pidFile)
  report.pid = pid
  const layout = await readCgroupLayout()
  report.cgroup = (await readFile(`/proc/${pid}/cgroup`, 'utf8')).trim()
  report.sandboxCgroup = cgroupDirs(layout, cgroupPath(sb.id))
  // The limits of the cgroup the process landed in (cgroup v2: the one line `0::<path>`).
  const v2Path = /^0::(\S+)$/m.exec(String(report.cgroup))?.[1]
  if (layout.v2 && v2Path) {
    const limit = (file: string) =>
      readFile(join(layout.root, v2Path, file), 'utf8').then((t) => t.trim(), errorMessage)
    report.limits = Object.fromEntries(
      await Promise.all(['memory.max', 'pids.max', 'cpu.max'].map(async (f) => [f, await limit(f)])),
    )
  }
  const m = fn.manifest
  report.readyMs = Math.round(
    await waitReady(sb.netns.ip, m.port, {
      path: m.readiness.path,
      expect: m.readiness.expect,
      timeoutMs: 60_000,
      intervalMs: 5,
      isAlive: () => isProcessAlive(pid),
    }),
  )
  const answers: number[] = []
  for (let i = 0; i < 20; i++) answers.push((await httpOnce(sb.netns.ip, m.port, m.readiness.path)).status)
  report.answers = answers.join(',')
  report.ok = true
} catch (err) {
  report.ok = false
  report.error = errorMessage(err)
} finally {
  await mkdir(keep, { recursive: true })
  // Regular files only: the work dir also holds the lazy-pages daemon's socket.
  for (const e of await readdir(sb.criuWorkDir, { withFileTypes: true }).catch(() => []))
    if (e.isFile()) await cp(join(sb.criuWorkDir, e.name), join(keep, e.name))
  await cp(sb.logFile, join(keep, 'output.log')).catch(() => undefined)
  killLazyPages(daemon)
  await host.sandboxes.destroy(used).catch((err: unknown) => (report.destroyError = errorMessage(err)))
  report.keep = keep
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`)
  process.exit(report.ok ? 0 : 1)
}
