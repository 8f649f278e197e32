import assert from 'node:assert/strict'
import { mkdtemp, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { HOST_GONE_MS, type ExecutorHeartbeat } from '../../shared/contracts.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { fakeRunner, type Call } from '../adapters/exec-fake.ts'
import { createPeerRouter, desiredPeerRoutes, networkIdentity } from './peers.ts'

const self = { hostId: 'host-a', subnet: '10.213.0.0/16' }
const NOW = 1_800_000_000_000
const peer = (hostId: string, subnet: string, address: string | undefined, ago = 0): ExecutorHeartbeat => ({
  hostId,
  at: NOW - ago,
  pid: 1,
  functions: [],
  subnet,
  ...(address ? { address } : {}),
})

describe('desiredPeerRoutes', () => {
  test('one route per live peer that advertises an address, never to this host', () => {
    const routes = desiredPeerRoutes(
      self,
      [
        peer('host-a', '10.213.0.0/16', '192.0.2.1'),
        peer('host-c', '10.215.0.0/16', '192.0.2.3', 2_000),
        peer('host-b', '10.214.9.9/16', '192.0.2.2'),
        peer('host-d', '10.216.0.0/16', undefined), // a single host: nothing to route to
        peer('host-e', '10.217.0.0/16', '192.0.2.5', HOST_GONE_MS + 1), // gone
        peer('host-f', '10.213.128.0/17', '192.0.2.6'), // overlaps this host's own subnet
        peer('host-g', 'garbage', '192.0.2.7'),
        { hostId: 'host-h', at: NOW, pid: 1, functions: [] }, // an executor older than subnets
      ],
      NOW,
    )
    assert.deepEqual(routes, [
      { subnet: '10.214.0.0/16', via: '192.0.2.2', hostId: 'host-b' },
      { subnet: '10.215.0.0/16', via: '192.0.2.3', hostId: 'host-c' },
    ])
  })

  test('a host with only a gateway (no subnet of its own) routes to every subnet', () => {
    const routes = desiredPeerRoutes(
      { hostId: 'gw-only' },
      [peer('host-a', '10.213.0.0/16', '192.0.2.1'), peer('host-b', '10.214.0.0/16', '192.0.2.2')],
      NOW,
    )
    assert.deepEqual(
      routes.map((r) => r.hostId),
      ['host-a', 'host-b'],
    )
  })

  test('an executor in this network namespace is no peer: its bridge is here', () => {
    const routes = desiredPeerRoutes(
      { ...self, network: 'boot:net:[1]' },
      [
        { ...peer('compose', '10.214.0.0/16', '192.0.2.1'), network: 'boot:net:[1]' },
        { ...peer('host-b', '10.215.0.0/16', '192.0.2.2'), network: 'other:net:[1]' },
      ],
      NOW,
    )
    assert.deepEqual(
      routes.map((r) => r.hostId),
      ['host-b'],
    )
  })

  test('two claims on one subnet: the freshest heartbeat wins', () => {
    const routes = desiredPeerRoutes(
      self,
      [peer('old', '10.214.0.0/16', '192.0.2.2', 10_000), peer('new', '10.214.0.0/16', '192.0.2.9', 500)],
      NOW,
    )
    assert.deepEqual(routes, [{ subnet: '10.214.0.0/16', via: '192.0.2.9', hostId: 'new' }])
  })
})

interface Route {
  dst: string
  gateway?: string
  protocol: string
}

/** A fake `ip` whose route table is `table`: answers `-j route show`, applies replace and del. */
function fakeIp(table: Route[]) {
  return fakeRunner((call) => {
    const a = call.args
    if (call.cmd === 'ip' && a[0] === '-j') return { stdout: JSON.stringify(table) }
    if (call.cmd === 'ip' && a[1] === 'replace') {
      const at = table.findIndex((r) => r.dst === a[2])
      if (at >= 0) table.splice(at, 1)
      table.push({ dst: a[2]!, gateway: a[4]!, protocol: a[6]! })
    }
    if (call.cmd === 'ip' && a[1] === 'del')
      table.splice(
        table.findIndex((r) => r.dst === a[2]),
        1,
      )
    return undefined
  })
}
const commands = (calls: Call[]) => calls.map((c) => [c.cmd, ...c.args].join(' '))

describe('createPeerRouter', () => {
  test('adds, moves and removes only its own routes, and reads the table again only when needed', async () => {
    const table: Route[] = [
      { dst: '10.213.0.0/16', protocol: 'kernel' }, // this host's bridge
      { dst: '10.215.0.0/16', gateway: '192.0.2.3', protocol: '213' }, // host-c's, which is gone
    ]
    const { run, calls } = fakeIp(table)
    const router = createPeerRouter({ run, self, logger: createSilentLogger() })

    await router.sync([peer('host-b', '10.214.0.0/16', '192.0.2.2')], NOW)
    assert.deepEqual(commands(calls), [
      'ip -j route show',
      'ip route replace 10.214.0.0/16 via 192.0.2.2 proto 213',
      'ip route del 10.215.0.0/16 proto 213',
    ])
    assert.deepEqual(table, [
      { dst: '10.213.0.0/16', protocol: 'kernel' },
      { dst: '10.214.0.0/16', gateway: '192.0.2.2', protocol: '213' },
    ])

    // Nothing changed: no command at all, until the table is due to be checked again.
    calls.length = 0
    await router.sync([peer('host-b', '10.214.0.0/16', '192.0.2.2')], NOW + 1_000)
    assert.deepEqual(calls, [])
    table.pop() // removed by hand
    await router.sync([peer('host-b', '10.214.0.0/16', '192.0.2.2')], NOW + 16_000)
    assert.deepEqual(commands(calls), [
      'ip -j route show',
      'ip route replace 10.214.0.0/16 via 192.0.2.2 proto 213',
    ])

    // host-b moved to another address: the route follows at the next beat.
    calls.length = 0
    await router.sync([peer('host-b', '10.214.0.0/16', '192.0.2.22', -17_000)], NOW + 17_000)
    assert.deepEqual(commands(calls), [
      'ip -j route show',
      'ip route replace 10.214.0.0/16 via 192.0.2.22 proto 213',
    ])
    assert.deepEqual(table, [
      { dst: '10.213.0.0/16', protocol: 'kernel' },
      { dst: '10.214.0.0/16', gateway: '192.0.2.22', protocol: '213' },
    ])
  })

  test('a subnet routed by someone else (a bridge here, the operator) is left alone', async () => {
    const table: Route[] = [
      { dst: '10.214.0.0/16', protocol: 'kernel' }, // another executor's bridge in this namespace
      { dst: '10.216.0.0/16', gateway: '192.0.2.99', protocol: 'static' }, // the operator's
    ]
    const { run, calls } = fakeIp(table)
    const router = createPeerRouter({ run, self, logger: createSilentLogger() })
    await router.sync(
      [peer('host-b', '10.214.0.0/16', '192.0.2.2'), peer('host-d', '10.216.0.0/16', '192.0.2.4')],
      NOW,
    )
    assert.deepEqual(commands(calls), ['ip -j route show'])
    assert.equal(table.length, 2)
  })

  test('a route the kernel refuses leaves the others in place and is tried again at every beat', async () => {
    let fail = true
    const failing = fakeRunner((call) =>
      fail && call.args[1] === 'replace' && call.args[4] === '198.51.100.7'
        ? new Error('Error: Nexthop has invalid gateway.')
        : undefined,
    )
    const router = createPeerRouter({ run: failing.run, self, logger: createSilentLogger() })
    const beats = [
      peer('host-b', '10.214.0.0/16', '198.51.100.7'),
      peer('host-c', '10.215.0.0/16', '192.0.2.3'),
    ]
    await router.sync(beats, NOW)
    assert.deepEqual(commands(failing.calls), [
      'ip -j route show',
      'ip route replace 10.214.0.0/16 via 198.51.100.7 proto 213',
      'ip route replace 10.215.0.0/16 via 192.0.2.3 proto 213',
    ])
    failing.calls.length = 0
    fail = false
    await router.sync(beats, NOW + 1_000) // not skipped: the table is not as wanted yet
    assert.deepEqual(commands(failing.calls).slice(0, 2), [
      'ip -j route show',
      'ip route replace 10.214.0.0/16 via 198.51.100.7 proto 213',
    ])
  })

  test('the route table unreadable: the sync fails, and the next one tries again', async () => {
    let fail = true
    const { run, calls } = fakeRunner((call) =>
      fail && call.args[0] === '-j' ? new Error('ip: not found') : undefined,
    )
    const router = createPeerRouter({ run, self, logger: createSilentLogger() })
    const beats = [peer('host-b', '10.214.0.0/16', '192.0.2.2')]
    await assert.rejects(router.sync(beats, NOW), /ip: not found/)
    fail = false
    calls.length = 0
    await router.sync(beats, NOW + 1_000)
    assert.deepEqual(commands(calls), [
      'ip -j route show',
      'ip route replace 10.214.0.0/16 via 192.0.2.2 proto 213',
    ])
  })

  test('forwarding: IPv4 forwarding on, marked DOCKER-USER rules added once and removed at close', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'initless-peers-'))
    const ipForwardPath = join(dir, 'ip_forward')
    await writeFile(ipForwardPath, '0')
    const rules = new Set<string>()
    const { run, calls } = fakeRunner((call) => {
      if (call.cmd !== 'iptables') return undefined
      const [, op, , ...rule] = call.args
      const key = rule.join(' ')
      if (op === '-L') return undefined
      if (op === '-C') return { code: rules.has(key) ? 0 : 1 }
      if (op === '-I') rules.add(key)
      if (op === '-D') return { code: rules.delete(key) ? 0 : 1 }
      return undefined
    })
    const router = createPeerRouter({ run, self, logger: createSilentLogger(), ipForwardPath })
    await router.openForwarding()
    await router.openForwarding() // a restart: nothing added twice
    assert.equal(await readFile(ipForwardPath, 'utf8'), '1')
    assert.deepEqual(
      [...rules],
      [
        '-d 10.213.0.0/16 -m comment --comment initless -j ACCEPT',
        '-s 10.213.0.0/16 -m comment --comment initless -j ACCEPT',
      ],
    )
    assert.equal(commands(calls).filter((c) => c.includes(' -I ')).length, 2)
    await router.closeForwarding()
    assert.deepEqual([...rules], [])
  })

  test('forwarding without Docker (no DOCKER-USER chain): only IPv4 forwarding', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'initless-peers-'))
    const ipForwardPath = join(dir, 'ip_forward')
    const { run, calls } = fakeRunner((call) => (call.cmd === 'iptables' ? { code: 1 } : undefined))
    const router = createPeerRouter({ run, self, logger: createSilentLogger(), ipForwardPath })
    await router.openForwarding()
    await router.closeForwarding()
    assert.equal(await readFile(ipForwardPath, 'utf8'), '1')
    assert.deepEqual(commands(calls), ['iptables -w -n -L DOCKER-USER', 'iptables -w -n -L DOCKER-USER'])
  })
})

test('networkIdentity: the boot id and this network namespace, the same for every call', async () => {
  const id = await networkIdentity()
  assert.match(id, /^[0-9a-f-]{36}:net:\[\d+\]$/)
  assert.equal(await networkIdentity(), id)
})
