/**
 * The cgroup freezer, for standby instances (scaling.standby): freeze a sandbox's cgroup, thaw it,
 * and read what it holds. v1: `freezer.state` in the freezer hierarchy (FROZEN / THAWED; reads
 * FREEZING until every task has stopped). v2: `cgroup.freeze` (1 / 0), and `frozen 1` in
 * `cgroup.events` once every task has stopped.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { hierarchyWith, type CgroupLayout } from './cgroups.ts'

/** The cgroup's directory holding `controller`'s files (v1), or its unified directory (v2). */
function dirOf(layout: CgroupLayout, controller: string, relPath: string): string | undefined {
  if (layout.v2) return join(layout.root, relPath)
  const h = hierarchyWith(layout, controller)
  return h === undefined ? undefined : join(layout.root, h, relPath)
}

/** The file that freezes the cgroup, and its values for frozen and thawed. */
export function freezerFile(
  layout: CgroupLayout,
  relPath: string,
): { file: string; frozen: string; thawed: string } {
  const dir = dirOf(layout, 'freezer', relPath)
  if (!dir) throw new Error(`no cgroup v1 freezer hierarchy under ${layout.root}: cannot freeze`)
  return layout.v2
    ? { file: join(dir, 'cgroup.freeze'), frozen: '1', thawed: '0' }
    : { file: join(dir, 'freezer.state'), frozen: 'FROZEN', thawed: 'THAWED' }
}

/** Has every task of the cgroup stopped? */
export async function isFrozen(layout: CgroupLayout, relPath: string): Promise<boolean> {
  const { file } = freezerFile(layout, relPath)
  if (!layout.v2) return (await readFile(file, 'utf8')).trim() === 'FROZEN'
  const events = await readFile(join(file, '..', 'cgroup.events'), 'utf8')
  return /^frozen 1$/m.test(events)
}

/**
 * Freeze the cgroup and wait until every task has stopped (at most `timeoutMs`). A task in an
 * uninterruptible sleep holds v1's state at FREEZING; v1 wants FROZEN written again to retry.
 */
export async function freezeCgroup(layout: CgroupLayout, relPath: string, timeoutMs = 2000): Promise<void> {
  const { file, frozen } = freezerFile(layout, relPath)
  const deadline = Date.now() + timeoutMs
  for (;;) {
    await writeFile(file, frozen)
    if (await isFrozen(layout, relPath)) return
    if (Date.now() > deadline)
      throw new Error(`${relPath}: the freezer did not stop every task within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 2))
  }
}

/** Thaw the cgroup (the tasks run again at once). A cgroup without a freezer file is left alone. */
export async function thawCgroup(layout: CgroupLayout, relPath: string): Promise<void> {
  const { file, thawed } = freezerFile(layout, relPath)
  await writeFile(file, thawed, { flag: 'r+' }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err
  })
}

export interface CgroupUsage {
  /** Memory charged to the cgroup (bytes): v1 memory.usage_in_bytes, v2 memory.current. */
  readonly memoryBytes: number
  /** CPU time its tasks used (ns): v1 cpuacct.usage, v2 cpu.stat usage_usec. */
  readonly cpuNs: number
}

/** What the cgroup holds and has used. */
export async function cgroupUsage(layout: CgroupLayout, relPath: string): Promise<CgroupUsage> {
  const read = async (controller: string, file: string) => {
    const dir = dirOf(layout, controller, relPath)
    if (!dir) throw new Error(`no cgroup v1 ${controller} hierarchy under ${layout.root}`)
    return readFile(join(dir, file), 'utf8')
  }
  if (layout.v2) {
    const stat = await read('cpu', 'cpu.stat')
    const usec = Number(/^usage_usec (\d+)$/m.exec(stat)?.[1] ?? 0)
    return { memoryBytes: Number((await read('memory', 'memory.current')).trim()), cpuNs: usec * 1000 }
  }
  return {
    memoryBytes: Number((await read('memory', 'memory.usage_in_bytes')).trim()),
    cpuNs: Number((await read('cpuacct', 'cpuacct.usage')).trim()),
  }
}
