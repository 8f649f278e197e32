/**
 * The network policy with a real executor and gateway (executor/adapters/firewall.ts): from inside
 * restored instances' namespaces, a host service, the other instance and a link-local listener are
 * unreachable; egress reaches an "outside" listener only for the function that allows it; the
 * gateway reaches both. Every address is one this test made: its own bridge and subnet, an outside
 * namespace with a veth to the host (10.238.x.2, and 169.254.x.2 standing in for a metadata
 * service), a listener of its own on the host. After the executor stops, none of initless's rules
 * is left, and a rule of the test's own is untouched.
 */
import assert from 'node:assert/strict'
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { connect, createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { runCommand, type CommandRunner } from '../executor/adapters/exec.ts'
import { createFirewall, policyChainNames } from '../executor/adapters/firewall.ts'
import { NETNS_PREFIX } from '../executor/sandbox/sandbox.ts'
import { requireServices } from './support/integration.ts'
import { startE2eStack, type E2eStack } from './support/e2e.ts'
import { tcpListenerIn } from './support/netns.ts'

const FIXTURES = join(import.meta.dirname, 'fixtures', 'functions')
const r = 1 + ((randomBytes(1)[0] ?? 0) % 250)
const tag = randomBytes(3).toString('hex')
const BRIDGE = `ilnp${tag}`
const SUBNET = `10.237.${r}.0/24`
const OUTSIDE_NS = `ilnp-out-${tag}`
const OUTSIDE_VETH = `ilnpo${tag}`
const OUTSIDE_IP = `10.238.${r}.2`
const OUTSIDE_HOST_IP = `10.238.${r}.1`
const LINK_LOCAL_IP = `169.254.${r}.2`
const PORT = 9077
const OTHER_CHAIN = `ILNPT-${tag}`
const OTHER_RULE = [
  'FORWARD',
  '-s',
  `10.239.${r}.9/32`,
  '-m',
  'comment',
  '--comment',
  `other-${tag}`,
  '-j',
  OTHER_CHAIN,
]

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8' })
const quiet = (cmd: string, args: string[]) => {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' })
  } catch {
    // cleanup of what may not exist
  }
}

type Outcome = 'open' | 'timeout' | 'refused' | 'unreachable'

/** Connect to host:port from inside the network namespace `ns` (1.5 s); what happened. */
function probeFrom(ns: string, host: string, port: number): Promise<Outcome> {
  // create_connection resolves both families, and a link-local IPv6 address with its %eth0 scope.
  const code = `import socket, errno
try:
    socket.create_connection((${JSON.stringify(host)}, ${port}), timeout=1.5); print("open")
except socket.timeout: print("timeout")
except ConnectionRefusedError: print("refused")
except OSError as e: print("unreachable" if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else "error %s" % e)`
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', ns, 'python3', '-c', code], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.stderr.on('data', (d: Buffer) => (out += d.toString()))
    child.once('error', reject)
    child.once('exit', () => resolve(out.trim() as Outcome))
  })
}

/** Connect from the host itself (the gateway's side). */
const probeFromHost = (host: string, port: number) =>
  new Promise<Outcome>((resolve) => {
    const c = connect({ host, port, timeout: 1500 })
    c.once('connect', () => (c.destroy(), resolve('open')))
    c.once('timeout', () => (c.destroy(), resolve('timeout')))
    c.once('error', (e: NodeJS.ErrnoException) =>
      resolve(e.code === 'ECONNREFUSED' ? 'refused' : 'unreachable'),
    )
  })

describe('network policy', () => {
  let stack: E2eStack | undefined
  let functionsDir = ''
  let outsideServer: ChildProcess | undefined
  let hostService: Server | undefined
  let hostService6: Server | undefined
  const stateDir = `/var/lib/initless-test/netpol-${tag}`
  after(async () => {
    await stack?.stop()
    outsideServer?.kill()
    hostService?.close()
    hostService6?.close()
    quiet('ip', ['netns', 'del', OUTSIDE_NS])
    quiet('ip', ['link', 'del', OUTSIDE_VETH])
    quiet('ip', ['link', 'del', BRIDGE])
    quiet('iptables', ['-w', '-D', ...OTHER_RULE])
    quiet('iptables', ['-w', '-F', OTHER_CHAIN])
    quiet('iptables', ['-w', '-X', OTHER_CHAIN])
    await rm(stateDir, { recursive: true, force: true })
    if (functionsDir) await rm(functionsDir, { recursive: true, force: true })
  })

  test('instances reach no host service, no other instance, no link-local address; egress per function', async (t) => {
    if (!requireServices(t)) return
    // A rule of someone else's, with a chain of its own: it must come through untouched.
    sh('iptables', ['-w', '-N', OTHER_CHAIN])
    sh('iptables', ['-w', '-A', OTHER_CHAIN, '-j', 'RETURN'])
    sh('iptables', ['-w', '-A', ...OTHER_RULE])
    const othersBefore = sh('iptables-save', [])
      .split('\n')
      .filter((l) => l.includes(OTHER_CHAIN))
    assert.equal(othersBefore.length, 3)

    // "Outside": a namespace of the test's own behind a veth to the host, with a listener on an
    // ordinary address and on a link-local one.
    sh('ip', ['netns', 'add', OUTSIDE_NS])
    sh('ip', ['link', 'add', OUTSIDE_VETH, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', OUTSIDE_NS])
    sh('ip', ['addr', 'add', `${OUTSIDE_HOST_IP}/24`, 'dev', OUTSIDE_VETH])
    sh('ip', ['link', 'set', OUTSIDE_VETH, 'up'])
    for (const cmd of [
      ['addr', 'add', `${OUTSIDE_IP}/24`, 'dev', 'eth0'],
      ['addr', 'add', `${LINK_LOCAL_IP}/32`, 'dev', 'eth0'],
      ['link', 'set', 'eth0', 'up'],
      ['link', 'set', 'lo', 'up'],
    ])
      sh('ip', ['-n', OUTSIDE_NS, ...cmd])
    sh('ip', ['route', 'add', `${LINK_LOCAL_IP}/32`, 'dev', OUTSIDE_VETH])
    outsideServer = await tcpListenerIn(OUTSIDE_NS, PORT)
    // A service of the host's own, on every address.
    hostService = createServer((c) => c.end())
    await new Promise<void>((resolve) => hostService?.listen(0, '0.0.0.0', resolve))
    const hostPort = (hostService.address() as { port: number }).port
    // And one on IPv6 (Node's default for a server given no host), reached over link-local.
    hostService6 = createServer((c) => c.end())
    await new Promise<void>((resolve) => hostService6?.listen(0, '::', resolve))
    const hostPort6 = (hostService6.address() as { port: number }).port

    functionsDir = await mkdtemp(join(tmpdir(), 'initless-netpol-'))
    for (const [name, egress] of [
      ['np-allow', undefined],
      ['np-deny', 'deny'],
    ] as const) {
      await cp(join(FIXTURES, 'py-ok'), join(functionsDir, name), { recursive: true })
      const manifest = join(functionsDir, name, 'function.yaml')
      // py-ok idles out after 2 s; the probes below need the instances for longer than that.
      const text = (await readFile(manifest, 'utf8')).replace('idleTimeout: 2s', 'idleTimeout: 5m')
      assert.match(text, /idleTimeout: 5m/)
      await writeFile(manifest, egress ? `${text}network:\n  egress: ${egress}\n` : text)
    }
    stack = await startE2eStack({
      env: {
        INITLESS_FUNCTIONS_DIR: functionsDir,
        INITLESS_STATE_DIR: stateDir,
        INITLESS_BRIDGE: BRIDGE,
        INITLESS_SUBNET: SUBNET,
      },
      prepareTimeoutMs: 300_000,
    })
    const chains = policyChainNames(BRIDGE)
    const applied = stack.executor.records().find((l) => l.msg === 'network policy applied')
    assert.ok(applied, 'the executor logs the policy it applied')
    t.diagnostic(`policy applied at start in ${String(applied.ms)} ms`)
    const forward = sh('iptables', ['-w', '-S', 'FORWARD']).split('\n')
    assert.match(forward[1] ?? '', new RegExp(`-j ${chains.forward}$`), 'the FORWARD jump comes first')

    // The gateway reaches both instances (a restore each).
    for (const fn of ['np-allow', 'np-deny']) {
      const res = await stack.request('GET', `/fn/${fn}/work`)
      assert.equal(res.status, 200, `${fn}: ${res.text}`)
    }
    const [allow] = await stack.instances('np-allow')
    const [deny] = await stack.instances('np-deny')
    assert.ok(allow?.address && deny?.address)
    const allowNs = `${NETNS_PREFIX}${allow.id}`
    const denyNs = `${NETNS_PREFIX}${deny.id}`
    const bridgeIp = `10.237.${r}.1`
    // The host over IPv6 is checked where the bridge has IPv6; where it is off (a container's
    // default, disable_ipv6=1) the host has no address on the bridge to reach over it.
    const ipv6 = readFileSync(`/proc/sys/net/ipv6/conf/${BRIDGE}/disable_ipv6`, 'utf8').trim() === '0'
    const bridgeIp6 = /inet6 (fe80::[0-9a-f:]+)\//.exec(
      sh('ip', ['-6', '-o', 'addr', 'show', 'dev', BRIDGE]),
    )?.[1]
    if (ipv6) assert.ok(bridgeIp6, 'the bridge has a link-local IPv6 address')

    // Controls: every target answers from the host, so a timeout below is the policy's doing.
    for (const [host, port] of [
      [OUTSIDE_IP, PORT],
      [LINK_LOCAL_IP, PORT],
      ['127.0.0.1', hostPort],
      [bridgeIp, hostPort],
      ...(ipv6 ? [[`${bridgeIp6}%${BRIDGE}`, hostPort6] as const] : []),
      [allow.address.host, allow.address.port],
      [deny.address.host, deny.address.port],
    ] as const)
      assert.equal(await probeFromHost(host, port), 'open', `host -> ${host}:${port}`)

    // An instance's IPv6 link-local address is tentative until duplicate address detection ends
    // (~1-2 s after its veth came up): until then a connection from it fails at bind, not at the
    // policy. Wait for it, so that the IPv6 row below tests the rules.
    for (const deadline = Date.now() + 10_000; ;) {
      const addr = sh('ip', ['-n', allowNs, '-6', '-o', 'addr', 'show', 'dev', 'eth0'])
      if (/inet6 fe80::/.test(addr) && !/tentative/.test(addr)) break
      assert.ok(Date.now() < deadline, `eth0 in ${allowNs} never got a usable link-local address: ${addr}`)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }

    const expect: [string, string, number, Outcome][] = [
      // egress: allowed for one function only
      [allowNs, OUTSIDE_IP, PORT, 'open'],
      [denyNs, OUTSIDE_IP, PORT, 'timeout'],
      // link-local (metadata) addresses
      [allowNs, LINK_LOCAL_IP, PORT, 'timeout'],
      [denyNs, LINK_LOCAL_IP, PORT, 'timeout'],
      // the host's own service, on the bridge address and on another address of the host
      [allowNs, bridgeIp, hostPort, 'timeout'],
      [allowNs, OUTSIDE_HOST_IP, hostPort, 'timeout'],
      [denyNs, bridgeIp, hostPort, 'timeout'],
      // the host over IPv6 (link-local: instances have no other IPv6 address)
      ...(ipv6
        ? [[allowNs, `${bridgeIp6}%eth0`, hostPort6, 'timeout'] as [string, string, number, Outcome]]
        : []),
      // each other
      [allowNs, deny.address.host, deny.address.port, 'timeout'],
      [denyNs, allow.address.host, allow.address.port, 'timeout'],
    ]
    const got = await Promise.all(expect.map(([ns, host, port]) => probeFrom(ns, host, port)))
    assert.deepEqual(
      got.map((o, i) => `${expect[i]?.[0] === allowNs ? 'allow' : 'deny'} -> ${expect[i]?.[1]}: ${o}`),
      expect.map(([ns, host, , o]) => `${ns === allowNs ? 'allow' : 'deny'} -> ${host}: ${o}`),
    )
    // Still served after all that (replies to the gateway pass).
    assert.equal((await stack.request('GET', '/fn/np-deny/work')).status, 200)

    await stack.stop()
    const saved = sh('iptables-save', [])
    for (const name of Object.values(chains)) assert.ok(!saved.includes(name), `${name} left behind`)
    assert.ok(!saved.includes(BRIDGE), 'a rule naming the bridge left behind')
    assert.deepEqual(
      saved.split('\n').filter((l) => l.includes(OTHER_CHAIN)),
      othersBefore,
      "the test's own rules are untouched",
    )
  })
})

/**
 * The firewall module against a real kernel, in a network namespace `H` the test makes as the
 * host (its own iptables): an instance namespace on H's bridge, and a peer namespace behind a
 * route of realm 213 to "another host's instances", as cluster/peers.ts adds it.
 */
describe('network policy in a namespace of its own', () => {
  const t2 = randomBytes(3).toString('hex')
  const [H, I, P] = ['h', 'i', 'p'].map((x) => `ilnp-${x}-${t2}`) as [string, string, string]
  let server: ChildProcess | undefined
  after(() => {
    server?.kill()
    for (const ns of [I, P, H]) quiet('ip', ['netns', 'del', ns])
  })

  test("instances reach no other host's instances; reconciliation repairs; removal leaves others' rules", async (t) => {
    if (!requireServices(t)) return
    const inH: CommandRunner = (cmd, args, opts) => runCommand('ip', ['netns', 'exec', H, cmd, ...args], opts)
    const ipH = (...args: string[]) => sh('ip', ['-n', H, ...args])
    for (const ns of [H, I, P]) sh('ip', ['netns', 'add', ns])
    ipH('link', 'set', 'lo', 'up')
    ipH('link', 'add', 'brT', 'type', 'bridge')
    ipH('addr', 'add', '10.50.1.1/24', 'dev', 'brT')
    ipH('link', 'set', 'brT', 'up')
    ipH('link', 'add', 'ilv0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', I)
    ipH('link', 'set', 'ilv0', 'master', 'brT', 'up')
    for (const cmd of [
      ['addr', 'add', '10.50.1.2/24', 'dev', 'eth0'],
      ['link', 'set', 'eth0', 'up'],
      ['route', 'add', 'default', 'via', '10.50.1.1'],
    ])
      sh('ip', ['-n', I, ...cmd])
    ipH('link', 'add', 'vp0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', P)
    ipH('addr', 'add', '10.9.0.1/24', 'dev', 'vp0')
    ipH('link', 'set', 'vp0', 'up')
    for (const cmd of [
      ['addr', 'add', '10.9.0.2/24', 'dev', 'eth0'],
      ['link', 'set', 'eth0', 'up'],
      ['link', 'set', 'lo', 'up'],
      ['addr', 'add', '10.60.0.1/32', 'dev', 'lo'],
      ['route', 'add', '10.50.1.0/24', 'via', '10.9.0.1'],
    ])
      sh('ip', ['-n', P, ...cmd])
    // "Another host's instance subnet", routed as peers.ts routes it.
    ipH('route', 'add', '10.60.0.0/16', 'via', '10.9.0.2', 'proto', '213', 'realm', '213')
    server = await tcpListenerIn(P, PORT)
    // A rule of someone else's in H, in a built-in chain, marked like ours.
    const theirs = ['FORWARD', '-s', '10.61.0.9/32', '-m', 'comment', '--comment', 'initless', '-j', 'ACCEPT']
    await inH('iptables', ['-w', '-A', ...theirs])

    const firewall = createFirewall({
      run: inH,
      settings: { bridge: 'brT', subnet: '10.50.1.0/24' },
      sysctl: async (key, value) => void (await inH('sysctl', ['-q', '-w', `${key}=${value}`])),
    })
    assert.equal((await firewall.status()).applied, false)
    await firewall.apply()
    assert.deepEqual(await firewall.status(), { applied: true, problems: [] })
    assert.equal(await probeFrom(I, '10.9.0.2', PORT), 'open', 'egress to an ordinary address')
    assert.equal(await probeFrom(I, '10.60.0.1', PORT), 'timeout', "another host's instance")

    // Tampered with: a rule of ours deleted, our FORWARD jump duplicated behind someone's rule.
    const chains = policyChainNames('brT')
    await inH('iptables', ['-w', '-D', chains.forward, '4'])
    await inH('iptables', [
      '-w',
      '-A',
      'FORWARD',
      '-m',
      'comment',
      '--comment',
      'initless',
      '-j',
      chains.forward,
    ])
    const tampered = await firewall.status()
    assert.deepEqual(tampered.problems, [`chain ${chains.forward} differs from the policy`])
    assert.equal(await probeFrom(I, '10.60.0.1', PORT), 'open', 'the realm rule was the one deleted')
    await firewall.apply()
    assert.deepEqual(await firewall.status(), { applied: true, problems: [] })
    const forward = (await inH('iptables', ['-w', '-S', 'FORWARD'])).stdout.split('\n')
    assert.equal(forward.filter((l) => l.includes(chains.forward)).length, 1, 'one jump, the duplicate gone')
    assert.equal(await probeFrom(I, '10.60.0.1', PORT), 'timeout')

    assert.deepEqual(await firewall.remove(), { removed: false, reason: '1 other instance(s) still on brT' })
    ipH('link', 'del', 'ilv0')
    assert.deepEqual(await firewall.remove(), { removed: true })
    const saved = (await inH('iptables-save', [])).stdout + (await inH('ip6tables-save', [])).stdout
    assert.ok(!saved.includes('INITLESS-'), saved)
    assert.deepEqual(
      saved.split('\n').filter((l) => l.includes('--comment initless')),
      [`-A ${theirs.join(' ')}`],
      'the rule of someone else is untouched',
    )
  })
})
