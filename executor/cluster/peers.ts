/**
 * Several hosts, one registry: routes to the other hosts' instance subnets.
 *
 * Every host hands out instance addresses from its own subnet (INITLESS_SUBNET; the registry refuses
 * an executor whose subnet overlaps a live host's, shared/registry.ts `beat`). An executor given
 * INITLESS_ADVERTISE_ADDRESS announces that address in its heartbeat, as where its subnet is
 * reached. Every executor routes each live peer's subnet via the peer's address (the "host-gw"
 * layout: plain routes, no overlay, no NAT; the hosts share a layer-2 network or routers that know
 * the subnets), so a gateway on any of these hosts reaches every instance at the address the
 * registry holds. The routes carry their own protocol number (ROUTE_PROTO): only those are ever
 * replaced or removed, and `ip route flush proto 213` removes them all.
 *
 * A host that advertises must also forward to its bridge what arrives from its peers: IPv4
 * forwarding on, and where Docker's FORWARD policy drops it, ACCEPT rules for the subnet in Docker's
 * DOCKER-USER chain (the chain Docker leaves to its users). Those go at shutdown; peer routes stay,
 * for a gateway on this host that still serves instances on the others.
 */
import { readFile, readlink, writeFile } from 'node:fs/promises'
import type { Logger } from 'pino'
import { HOST_GONE_MS, type ExecutorHeartbeat } from '../../shared/contracts.ts'
import { errorMessage } from '../../shared/errors.ts'
import { canonicalCidr, subnetsOverlap } from '../../shared/subnet.ts'
import type { CommandRunner } from '../adapters/exec.ts'

/** The routing protocol number of initless's routes (`ip route show proto 213`). */
export const ROUTE_PROTO = '213'
/** The kernel's table is read again at least this often, to repair routes removed by hand (ms). */
const RESYNC_MS = 15_000
/** The comment on initless's forwarding rules in DOCKER-USER. */
export const RULE_COMMENT = 'initless'

/**
 * The machine's boot id and this process's network namespace (`<boot id>:net:[<inode>]`): two
 * executors with the same one share the bridge and the host-wide address leases.
 */
export async function networkIdentity(): Promise<string> {
  const boot = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim()
  return `${boot}:${await readlink('/proc/self/ns/net')}`
}

export interface PeerRoute {
  readonly subnet: string
  readonly via: string
  readonly hostId: string
}

/**
 * The routes this host should have: one per peer that advertises an address and was heard from
 * within HOST_GONE_MS, the freshest heartbeat winning when two claim one subnet. Never a route for
 * a subnet that overlaps this host's own (if it has one: a host with only a gateway has none): its
 * instances are on its bridge; nor for an executor in the same network namespace (`network`).
 */
export function desiredPeerRoutes(
  self: {
    readonly hostId: string
    readonly subnet?: string | undefined
    readonly network?: string | undefined
  },
  heartbeats: readonly ExecutorHeartbeat[],
  now: number,
): PeerRoute[] {
  const bySubnet = new Map<string, ExecutorHeartbeat & { subnet: string; address: string }>()
  for (const h of heartbeats) {
    if (h.hostId === self.hostId || !h.subnet || !h.address || now - h.at > HOST_GONE_MS) continue
    // An executor in this network namespace has its bridge here: its subnet is a connected route.
    if (self.network !== undefined && h.network === self.network) continue
    let subnet: string
    try {
      subnet = canonicalCidr(h.subnet)
    } catch {
      continue
    }
    if (self.subnet !== undefined && subnetsOverlap(subnet, self.subnet)) continue
    const seen = bySubnet.get(subnet)
    if (!seen || seen.at < h.at) bySubnet.set(subnet, { ...h, subnet, address: h.address })
  }
  return [...bySubnet.values()]
    .map((h) => ({ subnet: h.subnet, via: h.address, hostId: h.hostId }))
    .sort((a, b) => a.subnet.localeCompare(b.subnet))
}

const routeKey = (r: PeerRoute) => `${r.subnet} via ${r.via}`

export interface PeerRouter {
  /** Bring the kernel's initless routes in line with the peers in `heartbeats`. */
  sync(heartbeats: readonly ExecutorHeartbeat[], now: number): Promise<void>
  /** Let the peers' packets through to this host's subnet (only a host that advertises needs it). */
  openForwarding(): Promise<void>
  /** Remove openForwarding's rules (IPv4 forwarding stays on: Docker needs it too). */
  closeForwarding(): Promise<void>
}

export interface PeerRouterDeps {
  readonly run: CommandRunner
  readonly self: { readonly hostId: string; readonly subnet: string; readonly network?: string }
  readonly logger: Logger
  /** Where IPv4 forwarding is switched on (tests point it elsewhere). */
  readonly ipForwardPath?: string
}

interface KernelRoute {
  readonly dst?: string
  readonly gateway?: string
  readonly protocol?: string
}

export function createPeerRouter(deps: PeerRouterDeps): PeerRouter {
  const { run } = deps
  const log = deps.logger.child({ module: 'peers' })
  const self = { ...deps.self, subnet: canonicalCidr(deps.self.subnet) }
  let applied: string | undefined
  let checkedAt = -Infinity
  /** Subnets already reported as routed by someone else (said once, not every sync). */
  const foreign = new Set<string>()
  /** Routes the kernel refused (`<subnet> via <address>`), also said once. */
  const failing = new Set<string>()

  /** The main table: initless's routes are found by their protocol number. */
  const kernelRoutes = async (): Promise<KernelRoute[]> => {
    const { stdout } = await run('ip', ['-j', 'route', 'show'])
    const parsed: unknown = JSON.parse(stdout.trim() || '[]')
    return Array.isArray(parsed) ? (parsed as KernelRoute[]) : []
  }

  // Marked as initless's by their comment: -C and -D then match these rules only, never an
  // operator's own rule for the same subnet.
  const forwardRules = (): string[][] =>
    ['-d', '-s'].map((dir) => [dir, self.subnet, '-m', 'comment', '--comment', RULE_COMMENT, '-j', 'ACCEPT'])
  const hasDockerUserChain = async () => {
    try {
      return (await run('iptables', ['-w', '-n', '-L', 'DOCKER-USER'], { okCodes: [0, 1] })).code === 0
    } catch (err) {
      // No iptables at all: no Docker firewall to open either.
      log.warn({ err: errorMessage(err) }, 'iptables unusable: no forwarding rules')
      return false
    }
  }

  return {
    async sync(heartbeats, now) {
      const want = desiredPeerRoutes(self, heartbeats, now)
      const key = JSON.stringify(want)
      if (key === applied && now - checkedAt < RESYNC_MS) return
      const table = await kernelRoutes()
      const have = table.filter((h) => h.protocol === ROUTE_PROTO)
      for (const r of want) {
        if (have.some((h) => h.dst === r.subnet && h.gateway === r.via)) continue
        // `replace` matches a route by its destination only: it would take over a route the
        // kernel, Docker or the operator made (a bridge's own subnet, routers that know it).
        const other = table.find((h) => h.dst === r.subnet && h.protocol !== ROUTE_PROTO)
        if (other) {
          if (!foreign.has(r.subnet))
            log.warn(
              { subnet: r.subnet, peer: r.hostId, route: other },
              'subnet already routed here: left alone',
            )
          foreign.add(r.subnet)
          continue
        }
        foreign.delete(r.subnet)
        const which = routeKey(r)
        try {
          await run('ip', ['route', 'replace', r.subnet, 'via', r.via, 'proto', ROUTE_PROTO])
          failing.delete(which)
          log.info({ subnet: r.subnet, via: r.via, peer: r.hostId }, 'route to peer added')
        } catch (err) {
          // A peer advertising an address this host cannot reach: the others still get theirs,
          // and it is tried again at every beat (said once).
          if (!failing.has(which))
            log.error(
              { subnet: r.subnet, via: r.via, peer: r.hostId, err: errorMessage(err) },
              'route to peer refused',
            )
          failing.add(which)
        }
      }
      for (const h of have) {
        if (!h.dst || want.some((r) => r.subnet === h.dst)) continue
        await run('ip', ['route', 'del', h.dst, 'proto', ROUTE_PROTO], { okCodes: [0, 2] })
        log.info({ subnet: h.dst, via: h.gateway }, 'route to peer removed')
      }
      if (want.some((r) => failing.has(routeKey(r)))) return
      applied = key
      checkedAt = now
    },
    async openForwarding() {
      await writeFile(deps.ipForwardPath ?? '/proc/sys/net/ipv4/ip_forward', '1')
      if (!(await hasDockerUserChain())) return
      for (const rule of forwardRules()) {
        const present = await run('iptables', ['-w', '-C', 'DOCKER-USER', ...rule], { okCodes: [0, 1] })
        if (present.code !== 0) await run('iptables', ['-w', '-I', 'DOCKER-USER', ...rule])
      }
      log.info({ subnet: self.subnet }, 'forwarding to this host subnet opened in DOCKER-USER')
    },
    async closeForwarding() {
      try {
        if (!(await hasDockerUserChain())) return
        for (const rule of forwardRules()) {
          // -D removes one copy at a time; a crash between -C and -I may have left two.
          for (let i = 0; i < 4; i++) {
            const { code } = await run('iptables', ['-w', '-D', 'DOCKER-USER', ...rule], { okCodes: [0, 1] })
            if (code !== 0) break
          }
        }
      } catch (err) {
        log.warn({ err: errorMessage(err) }, 'could not remove the forwarding rules')
      }
    },
  }
}
