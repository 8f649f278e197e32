/**
 * The quiet-machine gate every benchmark passes before it measures: on a two-CPU machine a load
 * of ~1.8 doubles CRIU's run time, so numbers taken on a busy machine are not comparable with
 * anything. The gate waits for the 1-minute load average to fall to `maxLoad` and for no other
 * initless process (executor, gateway, CRIU, runc, a function instance, another benchmark, a VM)
 * to be running; it refuses after `waitMs`, unless the caller accepts a busy machine, in which
 * case the result is marked not comparable and says why.
 */
import { readdir, readFile } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'

export interface QuietVerdict {
  /** Load and processes were within the limits when measuring began. */
  readonly comparable: boolean
  readonly load1m: number
  readonly maxLoad: number
  /** What was running that a benchmark must not share the machine with, `<what> (pid N)`. */
  readonly busy: readonly string[]
  readonly waitedMs: number
}

export interface ProcessInfo {
  readonly pid: number
  readonly comm: string
  /** argv joined by spaces. */
  readonly cmdline: string
  /** /proc/<pid>/cgroup as read. */
  readonly cgroup: string
}

/**
 * What a process is, if it is one a benchmark must not run beside; undefined otherwise.
 * Instances are recognised by their cgroup (every sandbox's cgroup path holds `/initless/`),
 * whatever the function runs.
 */
export function classifyProcess(p: ProcessInfo): string | undefined {
  if (p.comm === 'criu') return 'criu'
  if (p.comm === 'runc') return 'runc'
  if (p.comm.startsWith('qemu-system')) return 'virtual machine'
  if (/(^|\/)(dist\/)?executor\/main\.(js|ts)\b/.test(p.cmdline)) return 'executor'
  if (/(^|\/)(dist\/)?gateway\/main\.(js|ts)\b/.test(p.cmdline)) return 'gateway'
  if (/\bbench\/(run|restore|async|lifecycle|burst|slowloris|standby)\.ts\b/.test(p.cmdline))
    return 'benchmark'
  if (/\binitless(\.mjs)? (up|dev|bench)\b/.test(p.cmdline)) return 'initless up'
  if (/^\d+:[^:\n]*:\/(.*\/)?initless\/[^\n]+$/m.test(p.cgroup)) return 'function instance'
  return undefined
}

/** The processes classifyProcess names, read from /proc, leaving out `exclude` (this process). */
export async function busyProcesses(exclude: ReadonlySet<number>, proc = '/proc'): Promise<string[]> {
  const found: string[] = []
  for (const entry of await readdir(proc)) {
    const pid = Number(entry)
    if (!Number.isInteger(pid) || exclude.has(pid)) continue
    const info = await readProcess(proc, pid)
    const what = info && classifyProcess(info)
    if (what) found.push(`${what} (pid ${pid})`)
  }
  return found
}

async function readProcess(proc: string, pid: number): Promise<ProcessInfo | undefined> {
  try {
    const [comm, cmdline, cgroup] = await Promise.all(
      ['comm', 'cmdline', 'cgroup'].map((f) => readFile(`${proc}/${pid}/${f}`, 'utf8')),
    )
    // Kernel threads have an empty cmdline and are never ours.
    if (!cmdline) return undefined
    return { pid, comm: comm!.trim(), cmdline: cmdline.split('\0').join(' ').trim(), cgroup: cgroup! }
  } catch {
    return undefined // exited while being read
  }
}

/** pid and every ancestor of it up to init, from /proc/<pid>/stat. */
export async function ancestry(pid: number, proc = '/proc'): Promise<Set<number>> {
  const chain = new Set<number>()
  for (let p = pid; p > 1 && !chain.has(p);) {
    chain.add(p)
    try {
      const stat = await readFile(`${proc}/${p}/stat`, 'utf8')
      // The comm field may hold spaces and parentheses: the ppid is the 2nd field after its last ')'.
      p = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    } catch {
      break
    }
  }
  return chain
}

export async function loadAverage1m(path = '/proc/loadavg'): Promise<number> {
  const first = (await readFile(path, 'utf8')).split(' ')[0]
  const load = Number(first)
  if (!Number.isFinite(load)) throw new Error(`cannot read the load average from ${path}: '${first}'`)
  return load
}

export interface QuietOptions {
  readonly maxLoad: number
  readonly waitMs: number
  /** Measure anyway once waitMs has passed, marking the result not comparable. */
  readonly allowBusy: boolean
  readonly progress: (line: string) => void
  /** Pids not to count; default: this process and its ancestors (`npx initless bench`, a shell). */
  readonly exclude?: ReadonlySet<number>
  readonly pollMs?: number
  readonly sample?: () => Promise<{ load1m: number; busy: string[] }>
}

export class BusyMachineError extends Error {
  constructor(readonly verdict: QuietVerdict) {
    super(
      `not a quiet machine after ${Math.round(verdict.waitedMs / 1000)} s: ${describeBusy(verdict)}. ` +
        'Stop what is listed, wait for the load to fall, or pass --allow-busy (the result is then marked not comparable).',
    )
    this.name = 'BusyMachineError'
  }
}

export function describeBusy(v: QuietVerdict): string {
  const parts = [`load ${v.load1m} (limit ${v.maxLoad})`]
  if (v.busy.length) parts.push(`running: ${v.busy.join(', ')}`)
  return parts.join('; ')
}

/** Wait until the machine is quiet; throws BusyMachineError when it is not and busy is not allowed. */
export async function awaitQuietMachine(o: QuietOptions): Promise<QuietVerdict> {
  const sample =
    o.sample ??
    (async () => {
      const exclude = o.exclude ?? (await ancestry(process.pid))
      return { load1m: await loadAverage1m(), busy: await busyProcesses(exclude) }
    })
  const started = Date.now()
  let announced = false
  for (;;) {
    const { load1m, busy } = await sample()
    const waitedMs = Date.now() - started
    const verdict = { load1m, busy, maxLoad: o.maxLoad, waitedMs }
    if (load1m <= o.maxLoad && !busy.length) return { ...verdict, comparable: true }
    if (waitedMs >= o.waitMs) {
      if (!o.allowBusy) throw new BusyMachineError({ ...verdict, comparable: false })
      o.progress(
        `bench: measuring on a busy machine (--allow-busy): ${describeBusy({ ...verdict, comparable: false })}`,
      )
      return { ...verdict, comparable: false }
    }
    if (!announced) {
      o.progress(
        `bench: waiting up to ${Math.round(o.waitMs / 1000)} s for a quiet machine: ${describeBusy({ ...verdict, comparable: false })}`,
      )
      announced = true
    }
    await sleep(o.pollMs ?? 5000)
  }
}

/** The command-line options of the gate, for every benchmark's parseArgs. */
export const QUIET_ARGS = {
  'max-load': { type: 'string', default: '0.5' },
  'quiet-wait': { type: 'string', default: '300' },
  'allow-busy': { type: 'boolean', default: false },
} as const

export const QUIET_USAGE = `  --max-load <load>           1-minute load average a quiet machine has at most (default 0.5)
  --quiet-wait <s>            how long to wait for a quiet machine before refusing (default 300)
  --allow-busy                measure on a busy machine anyway; the result is marked not comparable`

/**
 * The gate as a benchmark's entry runs it, before it starts anything of its own: bad option values
 * end the process with exit code 2, a machine still busy after --quiet-wait with exit code 3.
 */
export async function passQuietGate(
  name: string,
  values: { 'max-load'?: string; 'quiet-wait'?: string; 'allow-busy'?: boolean },
  progress: (line: string) => void = (line) => console.error(line),
): Promise<QuietVerdict> {
  const maxLoad = Number(values['max-load'] ?? '0.5')
  const waitS = Number(values['quiet-wait'] ?? '300')
  if (!Number.isFinite(maxLoad) || maxLoad < 0) {
    console.error(`${name}: --max-load must be a number >= 0, got '${values['max-load']}'`)
    process.exit(2)
  }
  if (!Number.isInteger(waitS) || waitS < 0) {
    console.error(`${name}: --quiet-wait must be a whole number >= 0, got '${values['quiet-wait']}'`)
    process.exit(2)
  }
  try {
    return await awaitQuietMachine({
      maxLoad,
      waitMs: waitS * 1000,
      allowBusy: values['allow-busy'] ?? false,
      progress,
    })
  } catch (err) {
    if (!(err instanceof BusyMachineError)) throw err
    console.error(`${name}: ${err.message}`)
    process.exit(3)
  }
}
