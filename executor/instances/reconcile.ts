/**
 * Start-up reconciliation: whatever a previous run of this host left behind (its executor was
 * killed, the machine rebooted) is cleaned before the executor serves, and the helpers the
 * shutdown and the snapshot collection share with it.
 */
import { readdir, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import type { InstanceRegistry } from '../../shared/registry.ts'
import { destroyCgroup, readCgroupLayout } from '../adapters/cgroups.ts'
import { EXPORT_LABEL, type DockerEngine } from '../adapters/docker.ts'
import type { IpAllocator, NetworkManager } from '../adapters/network.ts'
import { isCriuWorkUnder, processArgv } from '../adapters/process.ts'
import type { Mounter } from '../adapters/rootfs.ts'
import type { Runc } from '../adapters/runc.ts'
import { cgroupPath, instancesDir, NETNS_PREFIX } from '../sandbox/sandbox.ts'

export interface ReconcileDeps {
  readonly hostId: string
  readonly stateDir: string
  readonly runc: Pick<Runc, 'list' | 'delete'>
  readonly mounter: Pick<Mounter, 'list' | 'unmount'>
  readonly network: Pick<NetworkManager, 'list' | 'destroy'>
  readonly ips: Pick<IpAllocator, 'release'>
  readonly docker: Pick<DockerEngine, 'listContainers' | 'removeContainer'>
  readonly registry: Pick<InstanceRegistry, 'listAll' | 'remove'>
  readonly logger: Logger
}

export interface ReconcileReport {
  containers: number
  mounts: number
  namespaces: number
  daemons: number
  dockerContainers: number
  registryEntries: number
}

/**
 * Clean everything a previous run of this host left: CRIU processes still at work for it (restores,
 * lazy-pages daemons), the processes in its sandboxes' cgroups (restored instances), runc
 * containers under our root, overlay mounts and sandbox dirs, network namespaces, Docker containers
 * of the boot runtime, and `ready`/`draining` registry entries of this host (their processes are
 * gone now).
 * `starting` entries stay: their jobs come back through BullMQ's stalled-job recovery.
 */
export async function reconcile(deps: ReconcileDeps): Promise<ReconcileReport> {
  const log = deps.logger.child({ module: 'reconcile' })
  const report: ReconcileReport = {
    containers: 0,
    mounts: 0,
    namespaces: 0,
    daemons: 0,
    dockerContainers: 0,
    registryEntries: 0,
  }
  const dir = instancesDir(deps.stateDir)
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const argv = await processArgv(Number(pid))
    if (argv && isCriuWorkUnder(argv, dir)) {
      try {
        process.kill(Number(pid), 'SIGKILL')
        report.daemons++
      } catch {
        // already gone
      }
    }
  }
  // Only what belongs to this state dir: several executors (and tests) may share one host.
  const ours = new Set(await readdir(dir).catch(() => [] as string[]))
  // Instances CRIU restored directly are no runc containers: their cgroup holds them.
  const cgroups = await readCgroupLayout()
  for (const id of ours) if (await destroyCgroup(cgroups, cgroupPath(id))) report.containers++
  for (const c of await deps.runc.list()) {
    if (!c.bundle.startsWith(`${dir}/`) && !ours.has(c.id)) continue
    await deps.runc.delete(c.id)
    report.containers++
  }
  for (const m of await deps.mounter.list(dir)) {
    await deps.mounter.unmount(m)
    report.mounts++
  }
  for (const ns of await deps.network.list(NETNS_PREFIX)) {
    if (!ours.has(ns.slice(NETNS_PREFIX.length))) continue
    await deps.network.destroy(ns)
    report.namespaces++
  }
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const sandbox = await readFile(join(dir, name, 'sandbox.json'), 'utf8').then(
      (t) => JSON.parse(t) as { netns?: { ip?: string } },
      () => undefined,
    )
    if (sandbox?.netns?.ip) deps.ips.release(sandbox.netns.ip)
    await rm(join(dir, name), { recursive: true, force: true })
  }
  // Bakes cut short by the crash left half-written snapshots: they can never complete now.
  const snapshots = join(deps.stateDir, 'snapshots')
  for (const fn of await readdir(snapshots).catch(() => [] as string[])) {
    for (const name of await readdir(join(snapshots, fn)).catch(() => [] as string[])) {
      if (name.startsWith('.tmp-')) await rm(join(snapshots, fn, name), { recursive: true, force: true })
    }
  }
  // Its instances' containers, and the containers of rootfs exports a crash cut short.
  report.dockerContainers += await removeHostContainers(deps.docker, deps.hostId, ['instances', 'exports'])
  for (const rec of await deps.registry.listAll()) {
    if (rec.hostId === deps.hostId && rec.state !== 'starting') {
      await deps.registry.remove(rec.fn, rec.id)
      report.registryEntries++
    }
  }
  log.info(report, 'reconciled')
  return report
}

/**
 * Remove this host's Docker containers of the given kinds: the boot runtime's instances
 * (`initless.host=<host id>`), rootfs exports (`initless.export=<host id>`). Returns how many.
 */
export async function removeHostContainers(
  docker: Pick<DockerEngine, 'listContainers' | 'removeContainer'>,
  hostId: string,
  kinds: readonly ('instances' | 'exports')[],
): Promise<number> {
  let removed = 0
  for (const kind of kinds) {
    const label = kind === 'instances' ? `initless.host=${hostId}` : `${EXPORT_LABEL}=${hostId}`
    for (const c of await docker.listContainers(label)) {
      await docker.removeContainer(c.id)
      removed++
    }
  }
  return removed
}

/** Is a snapshot dir still used by a mount (overlay lowerdir) or a lazy-pages daemon? */
export async function snapshotUsage(): Promise<(dir: string) => boolean> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8')
  const args: string[] = []
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const argv = await processArgv(Number(pid))
    if (argv?.includes('lazy-pages')) args.push(argv.join(' '))
  }
  return (dir) => mounts.includes(dir) || args.some((a) => a.includes(dir))
}
