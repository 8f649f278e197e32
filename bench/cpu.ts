/**
 * Where a warm-path run's CPU went: the proxy's process tree (the gateway, or nginx's master and
 * workers), the load generator (autocannon runs in this process), and the instance's cgroup with
 * how often its CPU quota throttled it. Sampled from /proc and the cgroup files before and after
 * each timed run: no tracing, nothing added to the measured path.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { InstanceAddress } from '../shared/contracts.ts'
import {
  CGROUP_ROOT,
  hierarchyWith,
  parseCgroupLayout,
  SANDBOX_CGROUP_PARENT,
  sandboxCgroupProcs,
  type CgroupLayout,
} from '../executor/adapters/cgroups.ts'

/** /proc/<pid>/stat times are in clock ticks of USER_HZ, 100 on Linux for every architecture. */
const USER_HZ = 100

/** Parent pid and user + system CPU seconds (all threads) from a `/proc/<pid>/stat` text. */
export function parseProcStat(text: string): { ppid: number; cpuSeconds: number } {
  // comm may hold spaces and parentheses: the fields start after its last `)`.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
  return { ppid: Number(fields[1]), cpuSeconds: (Number(fields[11]) + Number(fields[12])) / USER_HZ }
}

function readProcStat(pid: number): { ppid: number; cpuSeconds: number } | undefined {
  try {
    return parseProcStat(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return undefined // gone meanwhile
  }
}

/** User + system CPU seconds of `pid` and every process below it; 0 for a process that is gone. */
export function processTreeCpuSeconds(rootPid: number): number {
  const stats = new Map<number, { ppid: number; cpuSeconds: number }>()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const stat = readProcStat(Number(name))
    if (stat) stats.set(Number(name), stat)
  }
  const children = new Map<number, number[]>()
  for (const [pid, { ppid }] of stats) children.set(ppid, [...(children.get(ppid) ?? []), pid])
  let total = 0
  const todo = [rootPid]
  for (let pid = todo.pop(); pid !== undefined; pid = todo.pop()) {
    total += stats.get(pid)?.cpuSeconds ?? 0
    todo.push(...(children.get(pid) ?? []))
  }
  return total
}

/**
 * Busy and total CPU seconds of the whole machine, summed over its CPUs, and how many CPUs it
 * counts, from a `/proc/stat` text.
 */
export function parseMachineCpu(procStat: string): { busyS: number; totalS: number; cpus: number } {
  // cpu user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in
  // user and nice, so the first eight add up to the total. Steal is time the hypervisor gave
  // another guest: not this machine's work, so not busy.
  const lines = procStat.split('\n')
  const line = lines.find((l) => l.startsWith('cpu '))
  if (!line) throw new Error('no aggregate cpu line in /proc/stat')
  const f = line.trim().split(/\s+/).slice(1, 9).map(Number)
  const total = f.reduce((a, v) => a + v, 0)
  const notBusy = (f[3] ?? 0) + (f[4] ?? 0) + (f[7] ?? 0)
  return {
    busyS: (total - notBusy) / USER_HZ,
    totalS: total / USER_HZ,
    cpus: lines.filter((l) => /^cpu\d+ /.test(l)).length,
  }
}

/** Where a burst's CPU went: the machine, the gateway's process tree, this process. */
export interface MachineCpu {
  readonly cpus: number
  readonly wallS: number
  /** CPU seconds the machine was busy, every process and the kernel. */
  readonly busyS: number
  readonly gatewayS: number
  /** This process: the load generator. */
  readonly loadGeneratorS: number
}

/**
 * Measure the whole machine over one run: `const stop = machineCpuMeter(gatewayPid)`, then
 * `stop()`. The gateway's tree and this process as cpuMeter measures a warm-path run, plus
 * /proc/stat for everything else.
 */
export function machineCpuMeter(gatewayPid: number | undefined): () => MachineCpu {
  const machine = () => parseMachineCpu(readFileSync('/proc/stat', 'utf8'))
  const start = machine()
  const run = cpuMeter(gatewayPid, undefined)
  return () => {
    const r = run()
    const end = machine()
    const ms = (x: number) => Math.round(x * 1000) / 1000
    return {
      cpus: end.cpus,
      wallS: ms(r.seconds),
      busyS: ms(end.busyS - start.busyS),
      gatewayS: ms(r.proxyS ?? 0),
      loadGeneratorS: ms(r.loadGeneratorS),
    }
  }
}

/**
 * A reading's floor: the share of the CPUs' time it kept busy, and how long its busy CPU-seconds
 * take spread over every CPU (ms), the least wall time that work allows.
 */
export function cpuFloorOf(c: Pick<MachineCpu, 'cpus' | 'wallS' | 'busyS'>): {
  busyShare: number
  floorMs: number
} {
  return { busyShare: c.busyS / (c.wallS * c.cpus), floorMs: (c.busyS / c.cpus) * 1000 }
}

/** A port as /proc/net/tcp writes it in a local address (`0800D50A:1F90`): 4 hex digits. */
const procNetPort = (port: number) => port.toString(16).padStart(4, '0').toUpperCase()

/** Whether a /proc/<pid>/net/tcp text has a socket listening on `port` (any local address). */
export function listensOn(procNetTcp: string, port: number): boolean {
  const suffix = `:${procNetPort(port)}`
  for (const line of procNetTcp.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/)
    // sl local_address rem_address st ...; st 0A = LISTEN
    if (f[1]?.endsWith(suffix) && f[3] === '0A') return true
  }
  return false
}

/** Whether `host` is a local address of the network namespace whose /proc/net/fib_trie this is. */
export function hasLocalAddress(fibTrie: string, host: string): boolean {
  const lines = fibTrie.split('\n')
  return lines.some((l, i) => l.trim() === `|-- ${host}` && lines[i + 1]?.trim() === '/32 host LOCAL')
}

export interface CgroupCpu {
  /** CPU seconds used by every process in the cgroup. */
  readonly usageS: number
  /** CFS periods with runnable tasks, and how many of them ended throttled by the quota. */
  readonly periods: number
  readonly throttled: number
}

/** Reads one instance cgroup's CPU counters (cgroup v1: cpu + cpuacct; v2: cpu.stat). */
export interface InstanceCgroup {
  readonly dir: string
  read(): CgroupCpu | undefined
}

function statMap(text: string): Map<string, number> {
  return new Map(
    text
      .trim()
      .split('\n')
      .map((l) => l.split(' ') as [string, string])
      .map(([k, v]) => [k, Number(v)]),
  )
}

/**
 * The cgroup of the sandbox whose process listens on `address`: the network namespace that owns
 * the address and has a socket listening on the port (the cgroup is named after the sandbox, which
 * a pooled restore does not share with the instance id). Undefined when none is found.
 */
export function findInstanceCgroup(
  address: InstanceAddress,
  layout: CgroupLayout = parseCgroupLayout(readFileSync('/proc/self/mountinfo', 'utf8')),
): InstanceCgroup | undefined {
  const cpuHierarchy = layout.v2 ? '' : hierarchyWith(layout, 'cpu')
  const acctHierarchy = layout.v2 ? '' : hierarchyWith(layout, 'cpuacct')
  if (cpuHierarchy === undefined || acctHierarchy === undefined) return undefined
  for (const { name, pids } of sandboxCgroupProcs()) {
    const pid = pids[0]
    if (pid === undefined) continue
    // Every sandbox has its own network namespace: its address, and a socket on the port in it.
    try {
      if (!hasLocalAddress(readFileSync(`/proc/${pid}/net/fib_trie`, 'utf8'), address.host)) continue
      if (!listensOn(readFileSync(`/proc/${pid}/net/tcp`, 'utf8'), address.port)) continue
    } catch {
      continue // gone meanwhile
    }
    const dir = join(CGROUP_ROOT, cpuHierarchy, SANDBOX_CGROUP_PARENT, name)
    const acctDir = join(CGROUP_ROOT, acctHierarchy, SANDBOX_CGROUP_PARENT, name)
    return {
      dir,
      read() {
        try {
          const stat = statMap(readFileSync(join(dir, 'cpu.stat'), 'utf8'))
          const usageS = layout.v2
            ? (stat.get('usage_usec') ?? 0) / 1e6
            : Number(readFileSync(join(acctDir, 'cpuacct.usage'), 'utf8')) / 1e9
          return { usageS, periods: stat.get('nr_periods') ?? 0, throttled: stat.get('nr_throttled') ?? 0 }
        } catch {
          return undefined
        }
      },
    }
  }
  return undefined
}

/** CPU seconds used during one run, and the instance's CFS periods in it. */
export interface RunCpu {
  readonly seconds: number
  /** The proxy's process tree (gateway or nginx); undefined for direct runs. */
  readonly proxyS?: number
  /** This process: the load generator. */
  readonly loadGeneratorS: number
  readonly instanceS?: number
  /** The instance's CFS periods with runnable tasks, and those that ended throttled by its quota. */
  readonly periods?: number
  readonly throttled?: number
}

interface Mark {
  readonly at: number
  readonly proxy?: number
  readonly self: number
  readonly cgroup?: CgroupCpu | undefined
}

/** Measure one run: `const stop = cpuMeter(...)` before it, `stop()` after it. */
export function cpuMeter(proxyPid: number | undefined, instance: InstanceCgroup | undefined): () => RunCpu {
  const mark = (): Mark => {
    const usage = process.cpuUsage()
    return {
      at: performance.now(),
      ...(proxyPid !== undefined ? { proxy: processTreeCpuSeconds(proxyPid) } : {}),
      self: (usage.user + usage.system) / 1e6,
      cgroup: instance?.read(),
    }
  }
  const start = mark()
  return () => {
    const end = mark()
    const a = start.cgroup
    const b = end.cgroup
    return {
      seconds: (end.at - start.at) / 1000,
      // A proxy that exited meanwhile reads as less than before: no figure then.
      ...(start.proxy !== undefined && end.proxy !== undefined && end.proxy >= start.proxy
        ? { proxyS: end.proxy - start.proxy }
        : {}),
      loadGeneratorS: end.self - start.self,
      ...(a && b
        ? {
            instanceS: b.usageS - a.usageS,
            periods: b.periods - a.periods,
            throttled: b.throttled - a.throttled,
          }
        : {}),
    }
  }
}
