/**
 * Cgroup cleanup. runc removes a container's cgroups on `runc delete`, but a restore that failed or
 * timed out half-way leaves a cgroup runc no longer knows about, possibly with processes in it.
 * Works for cgroup v1 (one dir per controller) and v2 (one unified dir).
 */
import { readdir, readFile, rmdir } from 'node:fs/promises'
import { join } from 'node:path'

const ROOT = '/sys/fs/cgroup'

async function dirsFor(relPath: string): Promise<string[]> {
  const v2 = await readFile(join(ROOT, 'cgroup.controllers'), 'utf8').then(
    () => true,
    () => false,
  )
  if (v2) return [join(ROOT, relPath)]
  const hierarchies = await readdir(ROOT).catch(() => [] as string[])
  return hierarchies.map((h) => join(ROOT, h, relPath))
}

/** SIGKILL every process in the cgroup, then remove it in every hierarchy. Missing is fine. */
export async function destroyCgroup(relPath: string): Promise<void> {
  const dirs = await dirsFor(relPath)
  for (const dir of dirs) {
    const procs = await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => '')
    for (const pid of procs.split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL')
      } catch {
        // already gone
      }
    }
  }
  for (const dir of dirs) {
    for (let attempt = 0; attempt < 20; attempt++) {
      const err = await rmdir(dir).then(
        () => undefined,
        (e: NodeJS.ErrnoException) => e,
      )
      if (!err || err.code === 'ENOENT') break
      // EBUSY until the killed processes are reaped.
      await new Promise((r) => setTimeout(r, 25))
    }
  }
}
