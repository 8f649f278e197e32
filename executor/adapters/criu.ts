/**
 * The CRIU command line: version, the lazy-pages daemon and restores. runc drives CRIU for dumps
 * (it finds `criu` through PATH); restores run `criu restore` directly into a sandbox the executor
 * prepared, as runc would have asked CRIU to over its RPC (see `criuRestoreArgs`), without runc's
 * start, its CRIU version check and its state files (~50-100 ms per cold start on this VM class).
 */
import { spawn } from 'node:child_process'
import { access, open, readFile, writeFile } from 'node:fs/promises'
import type { Socket } from 'node:net'
import { join } from 'node:path'
import { InitlessError } from '../../shared/errors.ts'
import { failWithLogs, type CommandRunner } from './exec.ts'
import { openOutput } from './output.ts'
import { isProcessAlive, listensOnUnixSocket } from './process.ts'
import type { SandboxHelper, SpawnStatus } from './sandbox-helper.ts'

export interface LazyPagesDaemon {
  readonly pid: number
  /** Settles when the daemon exits: it does so by itself once every page has been pushed. */
  readonly exited: Promise<number | null>
}

/** The lazy-pages daemon's socket, bound relative to its work dir (CRIU's LAZY_PAGES_SOCK_NAME). */
const LAZY_PAGES_SOCKET = 'lazy-pages.socket'

/** SIGKILL a process group (a restore CRIU leads); gone is fine. */
function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL')
  } catch {
    // already gone
  }
}

/**
 * Stop a lazy-pages daemon that is no longer wanted (its restore failed or ended); gone is fine.
 * The daemon exits by itself once every page is pushed, so it may be reaped between the check and
 * the kill: ESRCH then means it is gone, not that stopping its instance failed.
 */
export function killLazyPages(daemon: LazyPagesDaemon | undefined): void {
  if (!daemon || !isProcessAlive(daemon.pid)) return
  try {
    process.kill(daemon.pid, 'SIGKILL')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err
  }
}

/**
 * The CRIU config file runc hands to CRIU (annotation `org.criu.config`) for a checkpoint.
 *
 * `network-lock skip`: by default CRIU locks the container's network with iptables during a dump
 * and unlocks it at the end of every restore (two iptables-restore runs to lock, two plus a shell
 * and two more to unlock: ~45-60 ms of process starts on the cold-start path). A restore uses the
 * method recorded at dump, so it must be set for the dump. Nothing needs the lock: a bake dumps a
 * process no client is connected to, and a restore lands in a brand-new namespace no one can reach
 * until the executor reports it ready.
 */
export function criuDumpConfigText(): string {
  return 'network-lock skip\n'
}

/**
 * The CRIU config file of a `runc restore` (the fallback path: criuRestoreArgs is the direct one),
 * which CRIU reads after runc's RPC options and lets override them:
 * - `mntns-compat-mode`: the old mount engine, as the direct path uses. CRIU's default mount-v2
 *   engine copies the sharing of the masked paths' `/dev/null` binds with
 *   `move_mount(MOVE_MOUNT_SET_GROUP)` from a file, which fails (`EINVAL`) where the host's `/dev`
 *   is a shared mount (every systemd host). Restores only: in a dump's config it fails the dump.
 * - `cgroup-root <cgroupRoot>`: the restored tasks go to the sandbox's cgroup, where runc set the
 *   limits and device rules. runc 1.1 names the cgroup to CRIU only on cgroup v1; on v2 CRIU
 *   would recreate the checkpointed container's cgroup and put every restore of a snapshot there,
 *   without limits. On v1 runc names the same path per controller.
 * - `lazy-pages` only for a lazy restore.
 */
export function criuRestoreConfigText(opts: { lazy: boolean; cgroupRoot: string }): string {
  const lines = ['network-lock skip', 'mntns-compat-mode', `cgroup-root ${opts.cgroupRoot}`]
  if (opts.lazy) lines.push('lazy-pages')
  return `${lines.join('\n')}\n`
}

/**
 * How long a CRIU run took, from the last timestamp of its log (`(SS.uuuuuu) ...` lines, seconds
 * since CRIU started). Reads only the log's tail. Undefined when there is no such line.
 */
export async function criuLogDuration(file: string): Promise<number | undefined> {
  const fh = await open(file, 'r').catch(() => undefined)
  if (!fh) return undefined
  try {
    const { size } = await fh.stat()
    const length = Math.min(size, 4096)
    const buf = Buffer.alloc(length)
    await fh.read(buf, 0, length, size - length)
    const stamps = [...buf.toString('latin1').matchAll(/^\((\d+\.\d+)\)/gm)]
    const last = stamps.at(-1)?.[1]
    return last === undefined ? undefined : Number(last) * 1000
  } finally {
    await fh.close()
  }
}

/** A bind mount of the container, as CRIU names it in a checkpoint runc took, and its host source. */
export interface ExternalMount {
  /** runc's key at dump: the mount's destination in the container (or `/dev/null` for masks). */
  readonly key: string
  readonly source: string
}

export interface CriuRestoreRequest {
  readonly imagesDir: string
  /** CRIU's work dir: restore.log, and the lazy-pages daemon's socket for a lazy restore. */
  readonly workDir: string
  /** The container's root, a mount point (the sandbox's overlay). */
  readonly root: string
  readonly pidFile: string
  /** The network namespace the checkpoint's external one (`extRootNetNS`) becomes. */
  readonly netnsPath: string
  /** cgroup path the restored tasks go to, relative to each hierarchy's root. */
  readonly cgroupRoot: string
  readonly externalMounts: readonly ExternalMount[]
  readonly lazy: boolean
  /** The output log: the restored process's stdout and stderr (the pipes it had at checkpoint). */
  readonly outputPath: string
  /** restore.log detail: 2 (warnings, the default) or 4 (debug: every page and mount). */
  readonly logLevel?: number
  /** A restore still running after this is killed (default 30 s). */
  readonly timeoutMs?: number
  /** The checkpoint's descriptors as `descriptors()` read them ahead; read now if absent. */
  readonly descriptors?: readonly string[]
}

/** runc records the checkpointed process's stdio in the image dir (`/dev/null`, `pipe:[ino]`...). */
export const DESCRIPTORS_FILE = 'descriptors.json'

/** Where `criu restore` finds its inherited files: stdio as usual, then the network namespace. */
const NETNS_FD = 3

/**
 * The `criu restore` command line for a checkpoint runc took of a sandbox's container: what runc
 * 1.1 sends CRIU over RPC for `runc restore -d`, spelled as options. `descriptors` is runc's record
 * of the process's stdio (its pipes are handed the output log). Tasks are detached (their parent
 * becomes init, as after `runc restore -d`); the old mount engine (`--mntns-compat-mode`, what
 * CRIU uses over RPC) restores this layout ~15 ms faster than mount-v2 here.
 */
export function criuRestoreArgs(req: CriuRestoreRequest, descriptors: readonly string[]): string[] {
  const args = [
    'restore',
    '--images-dir',
    req.imagesDir,
    '--work-dir',
    req.workDir,
    '--log-file',
    'restore.log',
    `-v${req.logLevel ?? 2}`,
    '--root',
    req.root,
    '--restore-detached',
    '--pidfile',
    req.pidFile,
    '--evasive-devices',
    '--mntns-compat-mode',
    '--network-lock',
    'skip',
    '--manage-cgroups=soft',
    '--cgroup-root',
    req.cgroupRoot,
    '--inherit-fd',
    `fd[${NETNS_FD}]:extRootNetNS`,
  ]
  descriptors.forEach((d, fd) => {
    if (d.startsWith('pipe:')) args.push('--inherit-fd', `fd[${fd}]:${d}`)
  })
  for (const m of req.externalMounts) args.push('--ext-mount-map', `${m.key}:${m.source}`)
  if (req.lazy) args.push('--lazy-pages')
  return args
}

export interface Criu {
  version(): Promise<string>
  /**
   * `criu restore` of a runc checkpoint into a prepared sandbox; resolves once CRIU has resumed the
   * process and exited, with how long CRIU ran (ms). A lazy restore needs its lazy-pages daemon
   * listening in `workDir` first.
   */
  restore(req: CriuRestoreRequest): Promise<number>
  /**
   * The checkpoint's stdio record (DESCRIPTORS_FILE), which a restore's command line needs. A cold
   * start reads it while its sandbox is prepared: read when CRIU is due, the file's open, stat,
   * read and close waited ~1 ms in the thread pool, straight on the critical path.
   */
  descriptors(imagesDir: string): Promise<readonly string[]>
  /** Write the CRIU config file runc passes to a restore (criuRestoreConfigText). */
  writeRestoreConfig(path: string, opts: { lazy: boolean; cgroupRoot: string }): Promise<void>
  /**
   * Start `criu lazy-pages` for one restore and resolve once its socket exists, i.e. once
   * `runc restore` may connect. One daemon serves exactly one restore.
   */
  startLazyPages(
    imagesDir: string,
    workDir: string,
    opts?: { timeoutMs?: number; /** Log every page fault (working-set profiling). */ verbose?: boolean },
  ): Promise<LazyPagesDaemon>
}

export function parseCriuVersion(output: string): string | undefined {
  return /Version:\s*(\d+\.\d+(?:\.\d+)?)/.exec(output)?.[1]
}

export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number)
  const pb = b.split('.').map(Number)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0)
    if (d !== 0) return Math.sign(d)
  }
  return 0
}

/** A started CRIU process: its pid and exit code (null when killed or unknown). */
/** Run `criu restore` through the helper; resolves with its run time, rejects like run() would. */
async function restoreViaHelper(
  h: SandboxHelper,
  bin: string,
  req: CriuRestoreRequest,
  args: string[],
): Promise<number> {
  const started = performance.now()
  const timeoutMs = req.timeoutMs ?? 30_000
  const proc = await h.spawn({
    argv: [bin, ...args],
    output: req.outputPath,
    fd3: req.netnsPath,
    // Its own session, as node's detached spawn gave it: the restored tasks start in it.
    mode: 'session',
    keepAlive: true,
  })
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    killGroup(proc.pid)
  }, timeoutMs)
  const exit = await proc.exited
  clearTimeout(timer)
  if (timedOut)
    throw new InitlessError('ERR_COMMAND_TIMEOUT', `${bin} restore: timed out after ${timeoutMs} ms`, {
      details: { cmd: bin, args },
    })
  if (exit.code !== 0)
    throw new InitlessError(
      'ERR_COMMAND_FAILED',
      `${bin} restore: exit ${exit.signal ? `on signal ${exit.signal}` : (exit.code ?? 'unknown (sandbox helper died)')}`,
      { details: { cmd: bin, args, code: exit.code } },
    )
  return performance.now() - started
}

/** A lazy-pages daemon just started, and its report of listening (or of failing to). */
interface StartingDaemon {
  readonly pid: number
  readonly exited: Promise<number | null>
  /** 'ready': it listens; 'unready': it exited first; 'unknown': ask its socket (waitListening). */
  readonly status: Promise<SpawnStatus>
}

/** Where the daemon reports that it listens: CRIU writes one byte to `--status-fd` after listen(). */
const STATUS_FD = 3

/**
 * Start a lazy-pages daemon, in its own session either way: it must outlive an executor restart,
 * or the pages it still owes a restored process would be lost. It reports on a pipe (fd 3) once it
 * listens: exactly when a restore may connect, with no polling on the cold-start path.
 */
async function launchLazyPages(
  bin: string,
  helper: SandboxHelper | undefined,
  args: string[],
  workDir: string,
): Promise<StartingDaemon> {
  const output = join(workDir, 'lazy-pages.out')
  const argv = [bin, ...args, '--status-fd', String(STATUS_FD)] as const
  if (helper) {
    const proc = await helper.spawn({ argv, output, status: true, mode: 'session', keepAlive: false })
    return {
      pid: proc.pid,
      exited: proc.exited.then((e) => e.code),
      status: proc.status ?? Promise.resolve('unknown'),
    }
  }
  const log = await open(output, 'a')
  const child = spawn(bin, argv.slice(1), { detached: true, stdio: ['ignore', log.fd, log.fd, 'pipe'] })
  // Listen before any await: a daemon that exits at once (or its pipe's end) is not waited for.
  const exited = new Promise<number | null>((resolve) => {
    child.on('exit', (code) => resolve(code))
    child.on('error', () => resolve(null))
  })
  // A 'pipe' stdio entry is a net.Socket.
  const pipe = child.stdio[STATUS_FD] as Socket | null
  const status = new Promise<SpawnStatus>((resolve) => {
    if (!pipe) return resolve('unready')
    pipe.once('data', () => resolve('ready'))
    pipe.once('close', () => resolve('unready')) // no effect once 'ready'
    pipe.once('error', () => resolve('unready'))
  })
  void status.then(() => pipe?.destroy())
  // Not to hold the executor's event loop: the daemon outlives any wait for it.
  child.unref()
  pipe?.unref()
  await log.close()
  if (child.pid === undefined) {
    await exited
    throw new InitlessError('ERR_RESTORE_FAILED', 'criu lazy-pages did not start')
  }
  return { pid: child.pid, exited, status }
}

/**
 * Wait until a lazy-pages daemon listens on its socket. Its status report says so; only when the
 * report was lost (the helper died) is its socket asked: its file appears at bind(), before
 * listen(), and a restore connecting in between fails ("connect to lazy-pages.socket failed"), so
 * then the daemon's own socket table must show it listening.
 */
async function waitListening(child: StartingDaemon, workDir: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), timeoutMs)))
  const status = await Promise.race([child.status, late]).finally(() => clearTimeout(timer))
  if (status === 'ready') return
  if (status === 'unready') {
    killLazyPages(child) // closed its pipe without a report: of no use, even if it runs on
    throw exitedBeforeListening(workDir)
  }
  if (status === 'unknown' && (await pollListening(child, workDir, deadline))) return
  killLazyPages(child)
  throw new InitlessError('ERR_RESTORE_FAILED', `criu lazy-pages did not listen within ${timeoutMs} ms`)
}

function exitedBeforeListening(workDir: string): InitlessError {
  return new InitlessError(
    'ERR_RESTORE_FAILED',
    `criu lazy-pages exited before listening (see ${workDir}/lazy-pages.log)`,
  )
}

/** Whether the daemon listens on its socket before `deadline`; throws if it exits first. */
async function pollListening(child: StartingDaemon, workDir: string, deadline: number): Promise<boolean> {
  const socket = join(workDir, LAZY_PAGES_SOCKET)
  let gone = false
  void child.exited.then(() => (gone = true))
  while (Date.now() <= deadline) {
    if (
      (await access(socket).then(
        () => true,
        () => false,
      )) &&
      (await listensOnUnixSocket(child.pid, LAZY_PAGES_SOCKET))
    )
      return true
    if (gone) throw exitedBeforeListening(workDir)
    await new Promise((r) => setTimeout(r, 1))
  }
  return false
}

/** The snapshot's inherited descriptors (DESCRIPTORS_FILE): a list of strings, else corrupt. */
async function readDescriptors(imagesDir: string): Promise<string[]> {
  const descriptors = JSON.parse(await readFile(join(imagesDir, DESCRIPTORS_FILE), 'utf8')) as unknown
  if (!Array.isArray(descriptors) || !descriptors.every((d) => typeof d === 'string'))
    throw new InitlessError(
      'ERR_SNAPSHOT_CORRUPT',
      `${imagesDir}/${DESCRIPTORS_FILE} is not a list of strings`,
    )
  return descriptors
}

/**
 * CRIU's restores and lazy-pages daemons are started by the sandbox helper when there is one
 * (node's spawn stops the event loop for 12-20 ms per process here), else by node.
 */
export function createCriu(deps: {
  run: CommandRunner
  bin?: string
  helper?: SandboxHelper | undefined
}): Criu {
  const bin = deps.bin ?? 'criu'
  const { helper } = deps

  return {
    async version() {
      const out = await deps.run(bin, ['--version'], { timeoutMs: 10_000 })
      const v = parseCriuVersion(out.stdout)
      if (!v)
        throw new InitlessError(
          'ERR_COMMAND_FAILED',
          `cannot read the CRIU version from: ${out.stdout.trim()}`,
        )
      return v
    },

    async restore(req) {
      const args = criuRestoreArgs(req, req.descriptors ?? (await readDescriptors(req.imagesDir)))
      if (helper) {
        try {
          return await restoreViaHelper(helper, bin, req, args)
        } catch (err) {
          return await failWithLogs(err, [join(req.workDir, 'restore.log')])
        }
      }
      const [netns, out] = await Promise.all([open(req.netnsPath, 'r'), openOutput(req.outputPath)])
      try {
        const res = await deps.run(bin, args, {
          stdio: ['ignore', out.fd, out.fd, netns.fd],
          timeoutMs: req.timeoutMs ?? 30_000,
          killGroup: true,
        })
        return res.ms
      } catch (err) {
        return await failWithLogs(err, [join(req.workDir, 'restore.log')])
      } finally {
        await Promise.all([netns.close(), out.close()])
      }
    },

    descriptors: readDescriptors,

    async writeRestoreConfig(path, opts) {
      await writeFile(path, criuRestoreConfigText(opts), { mode: 0o600 })
    },

    async startLazyPages(imagesDir, workDir, opts = {}) {
      const args = ['lazy-pages', '--images-dir', imagesDir, '--work-dir', workDir, '-o', 'lazy-pages.log']
      const child = await launchLazyPages(bin, helper, [...args, opts.verbose ? '-v4' : '-v2'], workDir)
      await waitListening(child, workDir, opts.timeoutMs ?? 10_000)
      return { pid: child.pid, exited: child.exited }
    },
  }
}
