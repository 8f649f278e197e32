/**
 * Per-instance network namespaces on a host-local bridge.
 *
 * Address plan: one Linux bridge per host (default `initless0`) holds the first address of the
 * subnet (default 10.213.0.1/16). Every instance gets its own named network namespace
 * (`/var/run/netns/initless-<id>`) with a veth pair: `eth0` inside, `ilv<id>` on the bridge, one
 * address from the subnet and a default route via the bridge. The bridge's own MAC is fixed
 * (macFor of its address), never the lowest of its ports' as Linux would pick. The gateway on the
 * same host reaches instances directly over the bridge; gateways on other hosts through the routes
 * the executors keep to each other's subnets (peers.ts).
 * `eth0`'s MAC is derived from its address (macFor), as Docker does: addresses are reused, and the
 * host's ARP cache keeps a freed address's MAC for 15-45 s. Two restores must never share a
 * namespace: both would bind the port and one would silently shadow the other.
 * A new pair passes frames to the instance only once the kernel's link watch has handled eth0's
 * going up: until then the host end's transmit queue (and, when no other port was up, the
 * bridge's) drops everything, so the host's first ARP request for the instance is lost and retried
 * only after 1 s. The link watch is a kernel worker behind the RTNL lock, which other link changes
 * on the host hold for tens of ms at a time; asking for a link (RTM_GETLINK, `ip link show dev`)
 * runs its pending work at once (Linux >= 6.8). A namespace is handed out only after that: the
 * sandbox helper asks and, on older kernels, waits until the links are up; the iproute2 fallback
 * asks once.
 * Then the host's neighbour entry for the address goes (RTM_DELNEIGH, `ip neigh flush`): traffic
 * that outlived the address's previous holder (a FIN the host retransmits for tens of seconds after
 * the instance went) keeps that entry INCOMPLETE, ARP requests one second apart, and a packet to an
 * INCOMPLETE entry waits for the next request: a new instance's first connection would wait up
 * to 1 s although it answers at once. Without an entry, the next packet's ARP request goes out at once.
 */
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { formatIp, parseCidr, parseIp, type Cidr } from '../../shared/subnet.ts'
import type { Egress } from '../../shared/manifest.ts'
import type { CommandRunner } from './exec.ts'
import type { SandboxHelpers } from './sandbox-helper.ts'

export interface NetworkSettings {
  /** Bridge device name (at most 15 characters). */
  readonly bridge: string
  /** IPv4 subnet in CIDR form; the bridge takes the first host address. */
  readonly subnet: string
}

export interface NamespaceHandle {
  readonly name: string
  /** Path runc joins (`linux.namespaces[].path`). */
  readonly path: string
  readonly ip: string
  /** The host end of its veth pair (its prefix carries the egress policy: vethName). */
  readonly veth?: string
}

/** The port the sandbox code uses; `createNetworkManager` is the real one. */
export interface NetworkManager {
  ensureBridge(): Promise<void>
  create(name: string, ip: string, egress?: Egress): Promise<NamespaceHandle>
  /** `veth` defaults to the name an instance allowed egress gets. */
  destroy(name: string, veth?: string): Promise<void>
  /** Namespaces whose name starts with `prefix` (reconciliation). */
  list(prefix: string): Promise<string[]>
}

export const NETNS_DIR = '/var/run/netns'

/**
 * The MAC of the instance that has `ip`: `02:42` (locally administered) then the address's four
 * bytes. A new instance on a reused address then has the MAC the host's ARP cache still holds for
 * it; with a random MAC, packets went to the old one (and were dropped) until the cache entry
 * expired: 10-20 s with no answer to a restored instance (the pool made it likely: its sandboxes
 * take the address of an instance stopped moments before).
 */
export function macFor(ip: string): string {
  const bytes = ip.split('.').map((o) => Number(o).toString(16).padStart(2, '0'))
  return ['02', '42', ...bytes].join(':')
}

export function gatewayIp(subnet: string): string {
  return formatIp(parseCidr(subnet).base + 1)
}

/**
 * Hands out host addresses of a subnet: .1 is the bridge, the broadcast address is never used.
 * With a `leaseDir`, every address is also leased host-wide by creating `<leaseDir>/<ip>`
 * exclusively, so several processes sharing the bridge (an executor, `initless bake`, tests) never
 * hand out the same address; releasing deletes the lease.
 */
export class IpAllocator {
  readonly #cidr: Cidr
  readonly #used = new Set<number>()
  readonly #leaseDir: string | undefined
  #next = 2

  constructor(subnet: string, leaseDir?: string) {
    this.#cidr = parseCidr(subnet)
    this.#leaseDir = leaseDir
    if (leaseDir) {
      mkdirSync(leaseDir, { recursive: true, mode: 0o700 })
      dropLeasesFromBeforeBoot(leaseDir)
    }
  }

  /** Take the host-wide lease of an address; false when another process holds it. */
  #lease(ip: string): boolean {
    if (!this.#leaseDir) return true
    try {
      closeSync(openSync(join(this.#leaseDir, ip), 'wx', 0o600))
      return true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
      throw err
    }
  }

  get size(): number {
    return 2 ** (32 - this.#cidr.bits) - 3
  }

  allocate(): string {
    const span = 2 ** (32 - this.#cidr.bits)
    for (let tries = 0; tries < span; tries++) {
      const offset = this.#next
      this.#next = this.#next + 1 >= span - 1 ? 2 : this.#next + 1
      if (!this.#used.has(offset) && this.#lease(formatIp(this.#cidr.base + offset))) {
        this.#used.add(offset)
        return formatIp(this.#cidr.base + offset)
      }
    }
    throw new Error(`no free address left in ${formatIp(this.#cidr.base)}/${this.#cidr.bits}`)
  }

  /** Mark an address taken (reconciliation). Addresses outside the subnet are ignored. */
  claim(ip: string): void {
    const offset = this.#offset(ip)
    if (offset !== undefined) this.#used.add(offset)
  }

  release(ip: string): void {
    const offset = this.#offset(ip)
    if (offset === undefined) return
    this.#used.delete(offset)
    if (this.#leaseDir) rmSync(join(this.#leaseDir, ip), { force: true })
  }

  #offset(ip: string): number | undefined {
    const n = parseIp(ip)
    if (n === undefined) return undefined
    const offset = n - this.#cidr.base
    return offset >= 2 && offset < 2 ** (32 - this.#cidr.bits) - 1 ? offset : undefined
  }
}

/**
 * Leases outlive nothing that holds an address: namespaces vanish at reboot, but the lease dir may
 * not be on a tmpfs (/run is not one on every host), so leases older than the boot are dropped.
 */
function dropLeasesFromBeforeBoot(dir: string): void {
  const btime = /^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1]
  if (!btime) return
  const bootMs = Number(btime) * 1000
  for (const name of readdirSync(dir)) {
    const path = join(dir, name)
    if (statSync(path).mtimeMs < bootMs) rmSync(path, { force: true })
  }
}

/**
 * veth names are limited to 15 characters; derive a stable one from the namespace name. The prefix
 * says the function's egress policy: the firewall matches `ild+` bridge ports (firewall.ts), so a
 * restore pays no firewall change of its own.
 */
export function vethName(nsName: string, egress: Egress = 'allow'): string {
  let h = 2166136261
  for (const ch of nsName) h = Math.imul(h ^ ch.charCodeAt(0), 16777619) >>> 0
  return `${egress === 'deny' ? DENY_VETH_PREFIX : ALLOW_VETH_PREFIX}${h.toString(16).padStart(8, '0')}`
}

/** Host-side veth prefixes: instances allowed egress, and instances denied it. */
export const ALLOW_VETH_PREFIX = 'ilv'
export const DENY_VETH_PREFIX = 'ild'

/** The egress policy a host-side veth was named for (vethName), if it is one of ours. */
export function vethEgress(veth: string): Egress | undefined {
  if (veth.startsWith(DENY_VETH_PREFIX)) return 'deny'
  if (veth.startsWith(ALLOW_VETH_PREFIX)) return 'allow'
  return undefined
}

/**
 * The real network manager. With the sandbox helper, namespaces are created and deleted by its
 * system calls; without it, by iproute2 (two `ip -batch` runs per create). The bridge and listings
 * always go through iproute2 (once per executor start, or off the request path).
 */
export function createNetworkManager(deps: {
  run: CommandRunner
  settings: NetworkSettings
  helpers?: SandboxHelpers | undefined
}): NetworkManager {
  const { run, settings, helpers } = deps
  const { bits } = parseCidr(settings.subnet)
  const gw = gatewayIp(settings.subnet)

  return {
    async ensureBridge() {
      const shown = await run('ip', ['-o', 'addr', 'show', 'dev', settings.bridge], { okCodes: [0, 1] })
      if (shown.code !== 0) {
        await run('ip', ['link', 'add', settings.bridge, 'type', 'bridge'], { okCodes: [0, 2] })
      }
      if (!shown.stdout.includes(` ${gw}/${bits} `)) {
        await run('ip', ['addr', 'replace', `${gw}/${bits}`, 'dev', settings.bridge])
      }
      // A fixed address (as Docker gives docker0): otherwise the bridge takes the lowest address
      // of its ports and changes it as veths come and go, and an instance whose ARP entry for the
      // gateway holds the old one sends its answers nowhere until the entry expires (15-45 s).
      await run('ip', ['link', 'set', settings.bridge, 'address', macFor(gw), 'up'])
    },

    async create(name, ip, egress) {
      const veth = vethName(name, egress)
      const path = `${NETNS_DIR}/${name}`
      if (helpers) {
        await helpers.namespaces.request({
          op: 'netns-create',
          args: [path, veth, macFor(ip), `${ip}/${bits}`, gw, settings.bridge],
        })
        return { name, path, ip, veth }
      }
      // Host side: the namespace, and a veth pair whose inner end is created inside it already.
      await run('ip', ['-batch', '-'], {
        input: [
          `netns add ${name}`,
          `link add ${veth} type veth peer name eth0 address ${macFor(ip)} netns ${name}`,
          `link set ${veth} master ${settings.bridge}`,
          `link set ${veth} up`,
        ].join('\n'),
      })
      try {
        await run('ip', ['-n', name, '-batch', '-'], {
          input: [
            'link set lo up',
            `addr add ${ip}/${bits} dev eth0`,
            'link set eth0 up',
            `route add default via ${gw}`,
            'link show dev eth0',
          ].join('\n'),
        })
        // Asking for a link settles its carrier change (see the top): the port, then the bridge.
        // Then the host forgets the address's previous holder (see the top).
        await run('ip', ['-batch', '-'], {
          input: [
            `link show dev ${veth}`,
            `link show dev ${settings.bridge}`,
            `neigh flush to ${ip} dev ${settings.bridge}`,
          ].join('\n'),
        })
      } catch (err) {
        await run('ip', ['netns', 'del', name], { okCodes: [0, 1, 255] })
        throw err
      }
      return { name, path, ip, veth }
    },

    async destroy(name, veth = vethName(name)) {
      if (helpers) {
        return helpers.teardown.request({
          op: 'netns-delete',
          args: [`${NETNS_DIR}/${name}`, veth],
        })
      }
      // Deleting the namespace takes its veth pair with it once no process holds the namespace.
      await run('ip', ['netns', 'del', name], { okCodes: [0, 1, 255] })
      await run('ip', ['link', 'del', veth], { okCodes: [0, 1, 2, 255] })
    },

    async list(prefix) {
      const out = await run('ip', ['netns', 'list'])
      return out.stdout
        .split('\n')
        .map((line) => line.split(' ')[0] ?? '')
        .filter((n) => n.startsWith(prefix))
    },
  }
}
