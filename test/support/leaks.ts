/**
 * What initless may leave on a host: containers (runc's under its root, and instances CRIU restored
 * directly: the processes of an instance cgroup whose root is under the state dir), network
 * namespaces, mounts under the state dir and CRIU processes (lazy-pages daemons, restores). Tests
 * compare before/after.
 */
import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { instanceCgroupsIn } from '../../executor/adapters/cgroups.ts'
import { isCriuWorkUnder } from '../../executor/adapters/process.ts'

export interface HostResources {
  readonly containers: string[]
  readonly namespaces: string[]
  readonly mounts: string[]
  readonly criu: string[]
}

export function hostResources(opts: {
  runcRoot: string
  stateDir: string
  nsPrefix?: string
}): HostResources {
  const prefix = opts.nsPrefix ?? 'initless-'
  let containers: string[] = []
  try {
    const out = execFileSync('runc', ['--root', opts.runcRoot, 'list', '--format', 'json'], {
      encoding: 'utf8',
    })
    containers = ((JSON.parse(out || 'null') as { id: string }[] | null) ?? []).map((c) => c.id)
  } catch {
    containers = []
  }
  const namespaces = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((n) => n.startsWith(prefix))
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p.startsWith(`${opts.stateDir}/`))
  const criu: string[] = []
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
      if (isCriuWorkUnder(argv, opts.stateDir)) criu.push(pid)
    } catch {
      // gone
    }
  }
  containers = [...containers, ...instanceCgroupsIn(opts.stateDir).map((id) => `cgroup:${id}`)]
  return { containers: containers.sort(), namespaces: namespaces.sort(), mounts: mounts.sort(), criu }
}

/** Resources present now that were not in `before`. */
export function leakedSince(before: HostResources, now: HostResources): HostResources {
  const diff = (a: string[], b: string[]) => b.filter((x) => !a.includes(x))
  return {
    containers: diff(before.containers, now.containers),
    namespaces: diff(before.namespaces, now.namespaces),
    mounts: diff(before.mounts, now.mounts),
    criu: diff(before.criu, now.criu),
  }
}

export const NO_LEAKS: HostResources = { containers: [], namespaces: [], mounts: [], criu: [] }
