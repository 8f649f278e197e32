/**
 * The sandbox helper (executor/native/sandbox-helper.c): one long-lived process that creates
 * network namespaces and mounts overlays with system calls, so preparing a sandbox starts no
 * process. On this VM class a process start costs 5-20 ms; the three `ip`/`mount` runs of a sandbox
 * were 60-85 ms of a cold start without the pre-started pool.
 *
 * scripts/build-native.sh builds and installs it (native.ts: `installedHelperPath`); a host
 * without it falls back to iproute2 and mount(8).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { createInterface } from 'node:readline'
import { errorMessage, InitlessError } from '../../shared/errors.ts'
import { isProcessAlive } from './process.ts'

/** One operation of the helper's protocol (see the C source) with its arguments. */
export type HelperRequest =
  | {
      op: 'netns-create'
      args: [nsFile: string, veth: string, mac: string, cidr: string, gateway: string, bridge: string]
    }
  | { op: 'netns-delete'; args: [nsFile: string, veth: string] }
  | { op: 'mount-overlay'; args: [target: string, options: string] }
  | { op: 'mount-tmpfs'; args: [target: string, options: string] }
  | { op: 'umount'; args: [target: string] }
  | { op: 'mkdir'; args: string[] }
  /** Triples: file, value, `1` if a missing file is skipped else `0`. */
  | { op: 'write'; args: string[] }
  /** Attach a cgroup v2 device filter allowing `rules` (devices.allow syntax) to a cgroup. */
  | { op: 'device-filter'; args: [cgroupDir: string, ...rules: string[]] }
  /** Build and load the filter for `rules` without attaching it: does this kernel take it? */
  | { op: 'device-filter-check'; args: string[] }
  | { op: 'ping'; args: [] }

export interface SpawnRequest {
  /** Program (looked up in PATH) and its arguments. */
  readonly argv: readonly [string, ...string[]]
  /** File the process's stdout and stderr append to (created 0600). */
  readonly output: string
  /** A file opened read-only as the process's fd 3. */
  readonly fd3?: string
  /**
   * Instead of `fd3`: fd 3 is the write end of a pipe, and the process reports readiness by
   * writing one byte to it (CRIU's `--status-fd 3`): see SpawnedProcess.status.
   */
  readonly status?: boolean
  /** Its own process group, or its own session (also a group): either way, kill it with -pid. */
  readonly mode: 'group' | 'session'
  /** Keep the executor's event loop alive until the process exits (as a node child would). */
  readonly keepAlive: boolean
}

/** How a spawned process ended; both null when unknown (the helper died before it did). */
export interface ProcessExit {
  readonly code: number | null
  readonly signal: number | null
}

/**
 * What a process spawned with `status` reported: `ready` (it wrote its byte), `unready` (it closed
 * the pipe or exited without), `unknown` (the helper died first: the process may still report).
 */
export type SpawnStatus = 'ready' | 'unready' | 'unknown'

export interface SpawnedProcess {
  readonly pid: number
  readonly exited: Promise<ProcessExit>
  /** Only when spawned with `status`. */
  readonly status?: Promise<SpawnStatus>
}

export interface SandboxHelper {
  /** Run one operation; rejects with ERR_COMMAND_FAILED carrying the helper's errno and message. */
  request(req: HelperRequest): Promise<void>
  /** Start a process from the helper; resolves once it runs (exec succeeded). */
  spawn(req: SpawnRequest): Promise<SpawnedProcess>
  /** The helper process's pid, if it is running (diagnostics). */
  processId(): number | undefined
  /** Stop the helper process (a later request starts a new one); spawned processes live on. */
  close(): void
}

/**
 * Three helper processes: set-up (the cold-start path: cgroups, mounts, CRIU starts), namespaces
 * (also on that path) and teardown. Requests to one process are served one at a time. Creating a
 * namespace takes ~2-3 ms here (the links must settle before it answers) and needs nothing the
 * other set-up steps make, so it runs on its own process beside them rather than ahead of them.
 * Deleting a veth waits for the kernel's RCU grace period (20-40 ms here): on a set-up process a
 * reaped instance's teardown would hold up the next cold start.
 */
export interface SandboxHelpers {
  readonly setup: SandboxHelper
  readonly namespaces: SandboxHelper
  readonly teardown: SandboxHelper
}

export function createSandboxHelpers(path: string): SandboxHelpers {
  return {
    setup: createSandboxHelper({ path }),
    namespaces: createSandboxHelper({ path }),
    teardown: createSandboxHelper({ path }),
  }
}

interface Pending {
  readonly what: string
  readonly details: Record<string, unknown>
  readonly resolve: (fields: string[]) => void
  readonly reject: (err: Error) => void
  readonly timer: NodeJS.Timeout
  /** A spawn's exit waiter: registered when its pid line is read (its exit line may follow at once). */
  readonly onExit?: Omit<Running, 'pid'>
}

interface Running {
  readonly pid: number
  readonly keepAlive: boolean
  readonly resolve: (exit: ProcessExit) => void
  /** Its status report (a process spawned with `status`); settling it again does nothing. */
  readonly onStatus?: (status: SpawnStatus) => void
}

const LOST_CHILD_POLL_MS = 20

/**
 * The requests a helper process has not answered yet, and the processes it spawned that have not
 * exited: matches each answer line to its request by tag.
 */
function createRequestTable() {
  const pending = new Map<string, Pending>()
  const running = new Map<string, Running>()
  return {
    add(tag: string, p: Pending) {
      pending.set(tag, p)
    },
    /** Something still needs the helper: an answer, or the exit of a process kept alive for. */
    isBusy(): boolean {
      if (pending.size > 0) return true
      for (const r of running.values()) if (r.keepAlive) return true
      return false
    },
    /** One answer line: `<tag>\t(ok|pid|err|ready|unready|exit)\t...`. */
    answer(line: string) {
      const [tag = '', status = '', ...rest] = line.split('\t')
      if (status === 'ready' || status === 'unready') {
        running.get(tag)?.onStatus?.(status)
        return
      }
      if (status === 'exit') {
        const r = running.get(tag)
        if (!r) return
        running.delete(tag)
        r.onStatus?.('unready') // the helper reports a status before the exit; this only settles it
        const [code = '', signal = ''] = rest
        r.resolve({ code: code === '-1' ? null : Number(code), signal: Number(signal) || null })
        return
      }
      const p = pending.get(tag)
      if (!p) return
      pending.delete(tag)
      clearTimeout(p.timer)
      if (status === 'err') {
        const [errno, ...message] = rest
        p.reject(
          new InitlessError('ERR_COMMAND_FAILED', `sandbox helper ${p.what}: ${message.join(' ')}`, {
            details: { ...p.details, errno: Number(errno) },
          }),
        )
      } else {
        if (status === 'pid' && p.onExit) running.set(tag, { ...p.onExit, pid: Number(rest[0]) })
        p.resolve(rest)
      }
    },
    /**
     * The helper is gone: every request fails; its spawned processes live on (init adopts them),
     * their exits are noticed by polling and reported with an unknown status.
     */
    failAll(why: string) {
      for (const [tag, p] of pending) {
        pending.delete(tag)
        clearTimeout(p.timer)
        p.reject(
          new InitlessError('ERR_COMMAND_FAILED', `sandbox helper ${p.what}: ${why}`, { details: p.details }),
        )
      }
      for (const [tag, r] of running) {
        running.delete(tag)
        r.onStatus?.('unknown')
        const poll = setInterval(() => {
          if (isProcessAlive(r.pid)) return
          clearInterval(poll)
          r.resolve({ code: null, signal: null })
        }, LOST_CHILD_POLL_MS)
        if (!r.keepAlive) poll.unref()
      }
    },
  }
}

/**
 * A client of one helper process, started at the first request and again after it died. Requests
 * are answered in order; a request not answered within `timeoutMs` kills the process (every pending
 * request fails with it).
 */
export function createSandboxHelper(opts: { path: string; timeoutMs?: number }): SandboxHelper {
  const timeoutMs = opts.timeoutMs ?? 30_000
  let child: ChildProcessWithoutNullStreams | undefined
  let nextTag = 1
  const table = createRequestTable()
  let stderr = ''

  // Idle, the helper must not keep the executor (or a test) alive; busy, it must.
  const updateRef = () => {
    if (!child) return
    const busy = table.isBusy()
    // The process and its two readable pipes each hold the event loop (stdin, idle, does not).
    const handles = [child, child.stdout, child.stderr] as unknown as ({
      ref?(): void
      unref?(): void
    } | null)[]
    for (const h of handles) {
      if (busy) h?.ref?.()
      else h?.unref?.()
    }
  }

  const start = (): ChildProcessWithoutNullStreams => {
    const proc = spawn(opts.path, [], { stdio: ['pipe', 'pipe', 'pipe'] })
    stderr = ''
    proc.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr = (stderr + d).slice(-2000)
    })
    proc.stdin.on('error', () => {}) // EPIPE when it died: reported by 'exit'
    createInterface({ input: proc.stdout }).on('line', (line) => {
      table.answer(line)
      updateRef()
    })
    const gone = (why: string) => {
      if (child !== proc) return
      child = undefined
      table.failAll(why)
    }
    proc.on('error', (err) => gone(errorMessage(err)))
    proc.on('exit', (code, signal) =>
      gone(`helper exited (${signal ?? `code ${code}`})${stderr ? `: ${stderr.trim()}` : ''}`),
    )
    return proc
  }

  const send = (
    what: string,
    fields: readonly string[],
    details: Record<string, unknown>,
    onExit?: Omit<Running, 'pid'>,
  ) => {
    if (fields.some((f) => /[\t\n]/.test(f)))
      return Promise.reject(
        new InitlessError('ERR_INTERNAL', `sandbox helper ${what}: an argument contains a tab or newline`),
      )
    child ??= start()
    const proc = child
    const tag = String(nextTag++)
    return new Promise<string[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        // A stuck kernel call: end the process; every request it held fails.
        proc.kill('SIGKILL')
        if (child === proc) child = undefined
        table.failAll(`no answer within ${timeoutMs} ms`)
      }, timeoutMs)
      table.add(tag, { what, details, resolve, reject, timer, ...(onExit ? { onExit } : {}) })
      updateRef()
      proc.stdin.write(`${[tag, ...fields].join('\t')}\n`)
    })
  }

  return {
    async request(req) {
      await send(req.op, [req.op, ...req.args], { cmd: opts.path, op: req.op, args: req.args })
    },
    async spawn(req) {
      if (req.status && req.fd3 !== undefined)
        throw new InitlessError(
          'ERR_INTERNAL',
          'sandbox helper spawn: fd 3 is either a file or the status pipe',
        )
      const fields = ['spawn', req.mode, req.output, req.status ? 'status' : (req.fd3 ?? '-'), ...req.argv]
      let resolveExit!: (exit: ProcessExit) => void
      const exited = new Promise<ProcessExit>((r) => (resolveExit = r))
      let resolveStatus: ((status: SpawnStatus) => void) | undefined
      const status = req.status ? new Promise<SpawnStatus>((r) => (resolveStatus = r)) : undefined
      const answer = await send(
        `spawn ${req.argv[0]}`,
        fields,
        { cmd: req.argv[0], args: req.argv.slice(1) },
        {
          keepAlive: req.keepAlive,
          resolve: resolveExit,
          ...(resolveStatus ? { onStatus: resolveStatus } : {}),
        },
      )
      return { pid: Number(answer[0]), exited, ...(status ? { status } : {}) }
    },
    processId() {
      return child?.pid
    },
    close() {
      const proc = child
      child = undefined
      table.failAll('helper closed')
      proc?.stdin?.end()
    },
  }
}
