/**
 * The network policy of instances, as iptables rules on the executor's bridge.
 *
 * What an instance may reach (docs/security.md "Network policy"):
 * - never another instance (bridged traffic between ports of the bridge, seen by iptables through
 *   br_netfilter; other hosts' instances: routes of realm 213, peers.ts), the host's own services (INPUT from the bridge, and DNAT'ed ports such as
 *   Docker's published ones), nor link-local addresses (169.254.0.0/16: cloud metadata);
 * - replies to connections opened to it (the executor's probes, gateways on this or other hosts);
 * - the rest (the internet) only if its function allows egress (`network.egress`, default allow),
 *   masqueraded behind the host's address as Docker does.
 *
 * The rules are static per host: an instance denied egress is told apart by its veth's name
 * (`ild…`, network.ts vethName), matched as a bridge port with `-m physdev`, so a restore runs no
 * iptables at all. All rules live in chains of initless's own, named after the bridge
 * (`INITLESS-FWD-<bridge>`, `INITLESS-IN-<bridge>`, `INITLESS-NAT-<bridge>`), which one
 * `iptables-restore --noflush` rewrites whole at start (a chain declaration flushes it); the
 * jumps to them from the built-in chains carry the comment `initless` and are the only rules of
 * the built-in chains this module adds or removes. The FORWARD jump must come first: Docker's
 * DOCKER-USER (where peers.ts opens this host's subnet to its peers) would accept otherwise.
 */
import { access, writeFile } from 'node:fs/promises'
import type { CommandRunner } from './exec.ts'
import { DENY_VETH_PREFIX } from './network.ts'

export const POLICY_COMMENT = 'initless'
/**
 * The routing realm of the routes to other hosts' instance subnets (cluster/peers.ts): new
 * connections from instances along them are instance to instance, across hosts.
 */
export const PEER_ROUTE_REALM = '213'
/** Link-local addresses, where clouds serve instance metadata (and credentials). */
export const LINK_LOCAL = '169.254.0.0/16'

export interface FirewallSettings {
  readonly bridge: string
  /** The instances' subnet (canonical CIDR). */
  readonly subnet: string
}

type Table = 'filter' | 'nat'

/** A rule in a built-in chain that jumps to one of ours: inserted first in `chain`. */
export interface Jump {
  readonly table: Table
  readonly chain: string
  readonly args: readonly string[]
}

export interface PolicyChain {
  readonly table: Table
  readonly name: string
  readonly rules: readonly (readonly string[])[]
}

export interface PolicyRuleSet {
  readonly chains: readonly PolicyChain[]
  readonly jumps: readonly Jump[]
}

export function policyChainNames(bridge: string): { forward: string; input: string; nat: string } {
  return { forward: `INITLESS-FWD-${bridge}`, input: `INITLESS-IN-${bridge}`, nat: `INITLESS-NAT-${bridge}` }
}

const mark = ['-m', 'comment', '--comment', POLICY_COMMENT] as const

/** The rules for one bridge and subnet: first match wins in every chain. */
export function policyRules(s: FirewallSettings): PolicyRuleSet {
  const c = policyChainNames(s.bridge)
  const b = s.bridge
  const replies = ['-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED', '-j', 'ACCEPT']
  const forward: string[][] = [
    ['-o', b, ...replies],
    ['-i', b, ...replies],
    // From here on, only new connections.
    ['-i', b, '-o', b, '-j', 'DROP'],
    // iptables-save prints the realm in hex: kept so, status() compares rule by rule.
    ['-i', b, '-m', 'realm', '--realm', `0x${Number(PEER_ROUTE_REALM).toString(16)}`, '-j', 'DROP'],
    ['-i', b, '-d', LINK_LOCAL, '-j', 'DROP'],
    // A host port forwarded by DNAT (Docker's published ports) is a service of the host.
    ['-i', b, '-m', 'conntrack', '--ctstate', 'DNAT', '-j', 'DROP'],
    ['-i', b, '-m', 'physdev', '--physdev-in', `${DENY_VETH_PREFIX}+`, '-j', 'DROP'],
    ['-i', b, '-j', 'ACCEPT'],
    // Gateways and executors on other hosts, through the routes peers.ts keeps.
    ['-o', b, '-j', 'ACCEPT'],
  ]
  const input: string[][] = [replies, ['-j', 'DROP']]
  const nat: string[][] = [['!', '-o', b, '-j', 'MASQUERADE']]
  const withMark = (rules: string[][]) =>
    rules.map((r) => [...r.slice(0, r.indexOf('-j')), ...mark, ...r.slice(r.indexOf('-j'))])
  return {
    chains: [
      { table: 'filter', name: c.forward, rules: withMark(forward) },
      { table: 'filter', name: c.input, rules: withMark(input) },
      { table: 'nat', name: c.nat, rules: withMark(nat) },
    ],
    jumps: [
      { table: 'filter', chain: 'FORWARD', args: [...mark, '-j', c.forward] },
      { table: 'filter', chain: 'INPUT', args: ['-i', b, ...mark, '-j', c.input] },
      { table: 'nat', chain: 'POSTROUTING', args: ['-s', s.subnet, ...mark, '-j', c.nat] },
    ],
  }
}

/**
 * IPv6: instances get no IPv6 address or route, but every veth has a link-local one, and services
 * listening on `::` (Node's default) would answer on it: all IPv6 from and to the bridge drops.
 */
export function policyRules6(s: FirewallSettings): PolicyRuleSet {
  const c = policyChainNames(s.bridge)
  const b = s.bridge
  const drop = [...mark, '-j', 'DROP']
  return {
    chains: [
      {
        table: 'filter',
        name: c.forward,
        rules: [
          ['-i', b, ...drop],
          ['-o', b, ...drop],
        ],
      },
      { table: 'filter', name: c.input, rules: [drop] },
    ],
    jumps: [
      { table: 'filter', chain: 'FORWARD', args: [...mark, '-j', c.forward] },
      { table: 'filter', chain: 'INPUT', args: ['-i', b, ...mark, '-j', c.input] },
    ],
  }
}

/** The rules of one table in `iptables-save` output: chain -> its `-A` lines' arguments, in order. */
export function parseSave(text: string): Map<Table, Map<string, string[][]>> {
  const tables = new Map<Table, Map<string, string[][]>>()
  let current: Map<string, string[][]> | undefined
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) {
      current = new Map()
      tables.set(line.slice(1).trim() as Table, current)
    } else if (current && line.startsWith(':')) {
      const name = line.slice(1).split(' ')[0] ?? ''
      if (!current.has(name)) current.set(name, [])
    } else if (current && line.startsWith('-A ')) {
      const words = splitWords(line)
      const chain = words[1] ?? ''
      const rules = current.get(chain) ?? []
      rules.push(words.slice(2))
      current.set(chain, rules)
    }
  }
  return tables
}

/** iptables-save quotes arguments with spaces ("--comment "a b""); initless's have none. */
function splitWords(line: string): string[] {
  return (line.match(/"[^"]*"|\S+/g) ?? []).map((w) => w.replace(/^"(.*)"$/, '$1'))
}

const targetOf = (args: readonly string[]) => args[args.indexOf('-j') + 1]
const sameRule = (a: readonly string[], b: readonly string[]) =>
  a.length === b.length && [...a].sort().join(' ') === [...b].sort().join(' ')

/**
 * The `iptables-restore --noflush` input that brings `saved` (iptables-save output) to the rule
 * set: every chain of ours declared (created, or flushed if it exists) and refilled; each jump kept
 * if it is there once, first in its chain and as wanted, else every jump to that chain deleted and
 * the wanted one inserted first. Nothing else is named, so no other rule is touched.
 */
export function reconcileScript(set: PolicyRuleSet, saved: string): string {
  const tables = parseSave(saved)
  const out: string[] = []
  for (const table of ['filter', 'nat'] as const) {
    const chains = set.chains.filter((c) => c.table === table)
    if (!chains.length) continue
    out.push(`*${table}`)
    for (const c of chains) out.push(`:${c.name} - [0:0]`)
    for (const j of set.jumps.filter((x) => x.table === table)) {
      const rules = tables.get(table)?.get(j.chain) ?? []
      const target = targetOf(j.args)
      const ours = rules.filter((r) => targetOf(r) === target)
      const first = rules[0]
      if (ours.length === 1 && first && targetOf(first) === target && sameRule(first, j.args)) continue
      for (const r of ours) out.push(['-D', j.chain, ...r].map(quote).join(' '))
      out.push(['-I', j.chain, '1', ...j.args].join(' '))
    }
    for (const c of chains) for (const r of c.rules) out.push(['-A', c.name, ...r].join(' '))
    out.push('COMMIT')
  }
  return `${out.join('\n')}\n`
}

/** The input that removes the rule set: its jumps (every one found), then its chains. */
export function removalScript(set: PolicyRuleSet, saved: string): string {
  const tables = parseSave(saved)
  const out: string[] = []
  for (const table of ['filter', 'nat'] as const) {
    const have = tables.get(table)
    const chains = set.chains.filter((c) => c.table === table && have?.has(c.name))
    if (!chains.length) continue
    out.push(`*${table}`)
    const names = new Set(chains.map((c) => c.name))
    for (const [chain, rules] of have ?? []) {
      if (names.has(chain)) continue
      for (const r of rules) {
        const target = targetOf(r)
        if (target && names.has(target)) out.push(['-D', chain, ...r].map(quote).join(' '))
      }
    }
    for (const c of chains) out.push(`-F ${c.name}`, `-X ${c.name}`)
    out.push('COMMIT')
  }
  return out.length ? `${out.join('\n')}\n` : ''
}

const quote = (w: string) => (/\s/.test(w) ? `"${w}"` : w)

export interface PolicyStatus {
  /** Every chain of ours holds its rules and every jump is first in its chain. */
  readonly applied: boolean
  /** What is missing or out of place, in words (doctor). */
  readonly problems: readonly string[]
}

/** Compare the kernel's rules (`saved`) with the rule set, without changing anything. */
export function policyStatus(set: PolicyRuleSet, saved: string): PolicyStatus {
  const tables = parseSave(saved)
  const problems: string[] = []
  for (const c of set.chains) {
    const have = tables.get(c.table)?.get(c.name)
    if (!have) problems.push(`chain ${c.name} missing`)
    else if (have.length !== c.rules.length || c.rules.some((r, i) => !sameRule(r, have[i] ?? [])))
      problems.push(`chain ${c.name} differs from the policy`)
  }
  for (const j of set.jumps) {
    const first = tables.get(j.table)?.get(j.chain)?.[0]
    if (!first || !sameRule(first, j.args))
      problems.push(`${j.chain} does not jump to ${targetOf(j.args)} first`)
  }
  return { applied: problems.length === 0, problems }
}

export interface Firewall {
  /** Set the policy up, repairing what differs (missing rules, stale or misplaced jumps). */
  apply(): Promise<void>
  /** Remove every rule of the policy (not while other instances still use the bridge). */
  remove(): Promise<{ removed: boolean; reason?: string }>
  status(): Promise<PolicyStatus>
}

export interface FirewallDeps {
  readonly run: CommandRunner
  readonly settings: FirewallSettings
  /** Writes a sysctl under /proc/sys (tests record instead). */
  readonly sysctl?: (key: string, value: string) => Promise<void>
  /** Whether br_netfilter is loaded (default: /proc/sys/net/bridge exists). */
  readonly bridgeNetfilter?: () => Promise<boolean>
}

const writeSysctl = (key: string, value: string) => writeFile(`/proc/sys/${key.replaceAll('.', '/')}`, value)
const hasBridgeNetfilter = () =>
  access('/proc/sys/net/bridge/bridge-nf-call-iptables').then(
    () => true,
    () => false,
  )

/** The real firewall: per family, `*tables-save` to read, one `*tables-restore --noflush` to write. */
export function createFirewall(deps: FirewallDeps): Firewall {
  const { run, settings } = deps
  const families = [
    { cmd: 'iptables', set: policyRules(settings) },
    { cmd: 'ip6tables', set: policyRules6(settings) },
  ]
  const sysctl = deps.sysctl ?? writeSysctl
  const save = async (cmd: string) => (await run(`${cmd}-save`, [])).stdout
  const restore = (cmd: string, script: string) =>
    run(`${cmd}-restore`, ['-w', '--noflush'], { input: script })

  return {
    async apply() {
      // Without br_netfilter, traffic between two ports of the bridge never meets iptables.
      if (!(await (deps.bridgeNetfilter ?? hasBridgeNetfilter)())) await run('modprobe', ['br_netfilter'])
      await sysctl('net.bridge.bridge-nf-call-iptables', '1')
      await sysctl('net.bridge.bridge-nf-call-ip6tables', '1')
      await sysctl('net.ipv4.ip_forward', '1')
      for (const f of families) await restore(f.cmd, reconcileScript(f.set, await save(f.cmd)))
    },

    async remove() {
      // Executors on one machine share the bridge: the rules stay while another one's instances
      // (any port left on it once this executor's instances are gone) depend on them.
      const ports = await run('ip', ['-o', 'link', 'show', 'master', settings.bridge], { okCodes: [0, 1] })
      const left = ports.stdout.split('\n').filter((l) => l.trim()).length
      if (ports.code === 0 && left > 0)
        return { removed: false, reason: `${left} other instance(s) still on ${settings.bridge}` }
      for (const f of families) {
        const script = removalScript(f.set, await save(f.cmd))
        if (script) await restore(f.cmd, script)
      }
      return { removed: true }
    },

    async status() {
      const problems: string[] = []
      for (const f of families) {
        const s = policyStatus(f.set, await save(f.cmd))
        problems.push(...s.problems.map((p) => (f.cmd === 'iptables' ? p : `${p} (IPv6)`)))
      }
      return { applied: problems.length === 0, problems }
    },
  }
}
