/**
 * What initless may leave on a host: containers (runc's under its root, and instances CRIU restored
 * directly: the processes of an instance cgroup whose root is under the state dir), network
 * namespaces, mounts under the state dir and CRIU processes (lazy-pages daemons, restores). Tests
 * compare before/after.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'

export interface HostResources {
  readonly containers: string[]
  readonly namespaces: string[]
  readonly mounts: string[]
  readonly criu: string[]
}

/**
 * The mountinfo line of a process's root mount (its overlay names its dirs), as its own mount
 * namespace has it: /proc/<pid>/root reads as `/` from outside such a namespace.
 */
export function rootMount(pid: number): string {
  const lines = readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n')
  return lines.find((l) => l.split(' ')[4] === '/') ?? ''
}

/** Instance cgroups (`cgroup:<id>`) holding a process whose root is under `stateDir`. */
function instanceCgroups(stateDir: string): string[] {
  const parent = ['/sys/fs/cgroup/pids/initless', '/sys/fs/cgroup/initless'].find((d) => existsSync(d))
  if (!parent) return []
  const out: string[] = []
  for (const id of readdirSync(parent, { withFileTypes: true }).filter((e) => e.isDirectory())) {
    try {
      const pids = readFileSync(`${parent}/${id.name}/cgroup.procs`, 'utf8').split('\n').filter(Boolean)
      if (pids.some((pid) => rootMount(Number(pid)).includes(`=${stateDir}/`))) out.push(`cgroup:${id.name}`)
    } catch {
      // gone meanwhile
    }
  }
  return out
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
      const isCriu = argv.includes('lazy-pages') || (argv.includes('restore') && argv[0]?.endsWith('criu'))
      if (isCriu && argv.some((a) => a.startsWith(opts.stateDir))) criu.push(pid)
    } catch {
      // gone
    }
  }
  containers = [...containers, ...instanceCgroups(opts.stateDir)]
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
