/**
 * Which way this host restores a snapshot: `criu restore` run by the executor (direct: ~100 ms less
 * per cold start than `runc restore`), or `runc restore`. A direct restore needs the executor to
 * give the sandbox's cgroup what runc would: on cgroup v1 file writes; on cgroup v2 also the device
 * rules, an eBPF program only the sandbox helper can load and attach. docs/cgroup-v2.md.
 */
import { readFile } from 'node:fs/promises'
import { errorMessage, isInitlessError } from '../../shared/errors.ts'
import { ALLOWED_DEVICES, type CgroupLayout } from '../adapters/cgroups.ts'
import type { SandboxHelper } from '../adapters/sandbox-helper.ts'

export interface RestorePath {
  /** `criu restore` by the executor; else `runc restore`. */
  readonly direct: boolean
  /** The cgroup version and what decided it, e.g. `cgroup v2, eBPF device filter`. */
  readonly reason: string
  /**
   * Why the kernel refused the device filter, when the helper runs but restores still go through
   * runc (a kernel without CONFIG_CGROUP_BPF, an executor without CAP_SYS_ADMIN).
   */
  readonly filterError?: string
  /** The answer would be the same next time: anything but a helper that died or did not answer. */
  readonly settled: boolean
}

/**
 * Decide the restore path. On cgroup v2 the sandbox helper builds and loads (without attaching) the
 * device filter for ALLOWED_DEVICES once: if the kernel takes it, restores are direct.
 */
export async function probeRestorePath(opts: {
  readonly layout: CgroupLayout
  readonly helper: SandboxHelper | undefined
  /** Why there is no helper, said when there is none (`sandbox helper off`). */
  readonly withoutHelper: string
}): Promise<RestorePath> {
  if (!opts.layout.v2) return { direct: true, reason: 'cgroup v1', settled: true }
  if (!opts.helper) return { direct: false, reason: `cgroup v2, ${opts.withoutHelper}`, settled: true }
  try {
    await opts.helper.request({ op: 'device-filter-check', args: [...ALLOWED_DEVICES] })
    return { direct: true, reason: 'cgroup v2, eBPF device filter', settled: true }
  } catch (err) {
    // The helper's own answer carries the kernel's errno; a helper that died has none.
    const answered = isInitlessError(err) && typeof err.details.errno === 'number'
    return {
      direct: false,
      reason: 'cgroup v2, eBPF device filter unavailable',
      filterError: errorMessage(err),
      settled: answered,
    }
  }
}

/** `direct (cgroup v1)`, `runc restore (cgroup v2, sandbox helper off)`... */
export function formatRestorePath(path: RestorePath): string {
  return `${path.direct ? 'direct' : 'runc restore'} (${path.reason})`
}

/** Where the kernel says whether anonymous memory gets transparent huge pages. */
export const THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'

/** The selected mode of a THP setting text (`always [madvise] never` -> `madvise`). */
export function parseThpMode(text: string): string | undefined {
  return /\[(\w+)\]/.exec(text)?.[1]
}

/** This host's THP mode; undefined without THP (a kernel built without it). */
export async function readThpMode(file = THP_SETTING): Promise<string | undefined> {
  return readFile(file, 'utf8').then(parseThpMode, () => undefined)
}

/**
 * Why lazy restores fail on this host, if they do. Where THP is `always`, CRIU writing the eagerly
 * restored pages of an area faults in zero-filled huge pages over its lazy pages, and the restored
 * process reads zeros (docs/cgroup-v2-vm.md, finding 5). The sandbox helper spawns CRIU with THP
 * disabled, but only direct restores are spawned by it: `runc restore` and, without a helper,
 * `criu restore` are started by node, which cannot set the flag.
 */
export function lazyRestoreHazard(
  path: Pick<RestorePath, 'direct'>,
  helper: boolean,
  thpMode: string | undefined,
): string | undefined {
  if (thpMode !== 'always' || (path.direct && helper)) return undefined
  const by = path.direct ? 'criu restore is started without the sandbox helper' : 'runc restore'
  return `transparent huge pages are 'always' and ${by}: lazy restores read zeros where their lazy pages were and crash`
}
