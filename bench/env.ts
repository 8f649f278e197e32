/**
 * What every benchmark result records about where and how it was measured.
 */
import { execFileSync } from 'node:child_process'
import { cpus, release, totalmem } from 'node:os'
import { readRcuExpedited } from '../executor/sandbox/host-tuning.ts'

export interface BenchEnvironment {
  readonly date: string
  readonly command: string
  readonly machine: {
    cpu: string
    cores: number
    memoryGiB: number
    kernel: string
    loadAvg1m: number
    /** /sys/kernel/rcu_expedited (executor/sandbox/host-tuning.ts): restores differ by ~15 ms. */
    rcuExpedited: boolean | null
  }
  readonly versions: { criu: string; runc: string; docker: string; node: string }
}

function version(cmd: string, args: string[], re: RegExp): string {
  try {
    return re.exec(execFileSync(cmd, args, { encoding: 'utf8', timeout: 10_000 }))?.[1] ?? 'unknown'
  } catch {
    return 'unavailable'
  }
}

/** ' (RCU grace periods expedited|normal)' after the kernel; '' where a result did not record it. */
export function rcuNote(machine: { readonly rcuExpedited?: boolean | null }): string {
  const e = machine.rcuExpedited
  return e === undefined || e === null ? '' : ` (RCU grace periods ${e ? 'expedited' : 'normal'})`
}

export function benchEnvironment(argv: readonly string[]): BenchEnvironment {
  const load = Number(execFileSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).split(' ')[0] ?? '0')
  return {
    date: new Date().toISOString(),
    command: argv.join(' '),
    machine: {
      cpu: cpus()[0]?.model ?? 'unknown',
      cores: cpus().length,
      memoryGiB: Math.round(totalmem() / 2 ** 30),
      kernel: release(),
      loadAvg1m: load,
      rcuExpedited: readRcuExpedited() ?? null,
    },
    versions: {
      criu: version('criu', ['--version'], /Version:\s*(\S+)/),
      runc: version('runc', ['--version'], /runc version (\S+)/),
      docker: version('docker', ['version', '--format', '{{.Server.Version}}'], /(\S+)/),
      node: process.version,
    },
  }
}

export function percentile(values: readonly number[], p: number): number {
  if (!values.length) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[idx]!
}

export const round = (n: number, digits = 1): number => Math.round(n * 10 ** digits) / 10 ** digits

/** Median of the measured values (missing or non-finite ones left out), rounded; NaN when none. */
export function medianOf(values: readonly (number | undefined)[]): number {
  return round(
    percentile(
      values.filter((v): v is number => Number.isFinite(v)),
      50,
    ),
  )
}
