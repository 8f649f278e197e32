import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { InitlessError } from '../../shared/errors.ts'
import { fakeRunner } from './exec-fake.ts'
import { createNetworkManager, gatewayIp, IpAllocator, macFor, vethName } from './network.ts'
import type { HelperRequest, SandboxHelper, SandboxHelpers } from './sandbox-helper.ts'

test('gatewayIp is the first host address of the subnet', () => {
  assert.equal(gatewayIp('10.213.0.0/16'), '10.213.0.1')
  assert.equal(gatewayIp('10.213.9.200/16'), '10.213.0.1')
  assert.equal(gatewayIp('192.168.1.5/30'), '192.168.1.5')
  assert.equal(gatewayIp('192.168.1.0/24'), '192.168.1.1')
})

describe('IpAllocator', () => {
  test('allocates from .2 upward', () => {
    const a = new IpAllocator('10.213.0.0/16')
    assert.deepEqual([a.allocate(), a.allocate(), a.allocate()], ['10.213.0.2', '10.213.0.3', '10.213.0.4'])
  })

  test('a /24 hands out .2 to .254 exactly once, never .0, .1 or the broadcast address', () => {
    const a = new IpAllocator('192.168.7.0/24')
    assert.equal(a.size, 253)
    const got = Array.from({ length: 253 }, () => a.allocate())
    assert.equal(new Set(got).size, 253)
    assert.equal(got[0], '192.168.7.2')
    assert.equal(got.at(-1), '192.168.7.254')
    for (const ip of ['192.168.7.0', '192.168.7.1', '192.168.7.255']) assert.ok(!got.includes(ip), ip)
    assert.throws(() => a.allocate(), { message: 'no free address left in 192.168.7.0/24' })
  })

  test('a /30 has a single address after the bridge', () => {
    const a = new IpAllocator('10.0.0.0/30')
    assert.equal(a.size, 1)
    assert.equal(a.allocate(), '10.0.0.2')
    assert.throws(() => a.allocate(), { message: 'no free address left in 10.0.0.0/30' })
    a.release('10.0.0.2')
    assert.equal(a.allocate(), '10.0.0.2')
  })

  test('released addresses are reused once the others are taken', () => {
    const a = new IpAllocator('10.0.0.0/29') // .2 to .6
    const got = Array.from({ length: 5 }, () => a.allocate())
    assert.deepEqual(got, ['10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5', '10.0.0.6'])
    a.release('10.0.0.4')
    assert.equal(a.allocate(), '10.0.0.4')
    assert.throws(() => a.allocate(), /no free address left/)
  })

  test('a released address is not handed out again at once while others are free', () => {
    const a = new IpAllocator('10.0.0.0/29')
    assert.equal(a.allocate(), '10.0.0.2')
    a.release('10.0.0.2')
    assert.equal(a.allocate(), '10.0.0.3')
  })

  test('claim marks an address taken; addresses outside the host range are ignored', () => {
    const a = new IpAllocator('10.0.0.0/29')
    a.claim('10.0.0.2')
    a.claim('10.0.0.4')
    // Outside the subnet, the network/bridge/broadcast addresses and garbage change nothing.
    for (const ip of ['10.0.1.3', '10.0.0.0', '10.0.0.1', '10.0.0.7', 'not-an-ip']) a.claim(ip)
    assert.deepEqual([a.allocate(), a.allocate(), a.allocate()], ['10.0.0.3', '10.0.0.5', '10.0.0.6'])
    assert.throws(() => a.allocate(), /no free address left in 10\.0\.0\.0\/29/)
    a.release('10.0.1.3') // outside: no effect
    assert.throws(() => a.allocate(), /no free address left/)
  })

  test('an invalid subnet is rejected at construction', () => {
    assert.throws(() => new IpAllocator('10.0.0.0/31'), /invalid subnet/)
  })
})

test('macFor: locally administered, the address in its last four bytes, one per address', () => {
  assert.equal(macFor('10.213.0.7'), '02:42:0a:d5:00:07')
  assert.equal(macFor('10.213.255.254'), '02:42:0a:d5:ff:fe')
  assert.notEqual(macFor('10.213.1.0'), macFor('10.213.0.1'))
})

describe('vethName', () => {
  test('fits the 15-character interface name limit', () => {
    for (const name of ['a', 'initless-0123456789abcdef0123456789abcdef', 'x'.repeat(300)]) {
      const v = vethName(name)
      assert.ok(v.length <= 15, v)
      assert.match(v, /^ilv[0-9a-f]{8}$/)
    }
  })

  test('is stable and differs between names', () => {
    assert.equal(vethName('initless-abc'), vethName('initless-abc'))
    const names = Array.from({ length: 200 }, (_, i) => `initless-${i}`)
    assert.equal(new Set(names.map((n) => vethName(n))).size, names.length)
    assert.notEqual(vethName('initless-ab'), vethName('initless-ba'))
  })

  test('an instance denied egress gets the prefix the firewall matches, same hash', () => {
    assert.match(vethName('initless-abc', 'deny'), /^ild[0-9a-f]{8}$/)
    assert.equal(vethName('initless-abc', 'deny').slice(3), vethName('initless-abc').slice(3))
    assert.equal(vethName('initless-abc', 'allow'), vethName('initless-abc'))
  })
})

const settings = { bridge: 'initless0', subnet: '10.213.0.0/16' }

describe('createNetworkManager', () => {
  test('create() issues three ip -batch calls: host side, inside the namespace, links settled', async () => {
    const { run, calls } = fakeRunner()
    const net = createNetworkManager({ run, settings })
    const handle = await net.create('initless-abc', '10.213.0.7')
    const veth = vethName('initless-abc')
    assert.deepEqual(handle, {
      name: 'initless-abc',
      path: '/var/run/netns/initless-abc',
      ip: '10.213.0.7',
      veth,
    })
    assert.deepEqual(calls, [
      {
        cmd: 'ip',
        args: ['-batch', '-'],
        options: {
          input: [
            'netns add initless-abc',
            `link add ${veth} type veth peer name eth0 address 02:42:0a:d5:00:07 netns initless-abc`,
            `link set ${veth} master initless0`,
            `link set ${veth} up`,
          ].join('\n'),
        },
      },
      {
        cmd: 'ip',
        args: ['-n', 'initless-abc', '-batch', '-'],
        options: {
          input: [
            'link set lo up',
            'addr add 10.213.0.7/16 dev eth0',
            'link set eth0 up',
            'route add default via 10.213.0.1',
            'link show dev eth0',
          ].join('\n'),
        },
      },
      {
        cmd: 'ip',
        args: ['-batch', '-'],
        options: {
          input: [
            `link show dev ${veth}`,
            'link show dev initless0',
            'neigh flush to 10.213.0.7 dev initless0',
          ].join('\n'),
        },
      },
    ])
  })

  test('a failure inside the namespace deletes the namespace and rethrows', async () => {
    const boom = new InitlessError('ERR_COMMAND_FAILED', 'ip -n initless-x -batch -: exit 1')
    const { run, calls } = fakeRunner((_call, i) => (i === 1 ? boom : undefined))
    const net = createNetworkManager({ run, settings })
    await assert.rejects(net.create('initless-x', '10.213.0.9'), (err) => err === boom)
    assert.equal(calls.length, 3)
    assert.deepEqual(calls[2], {
      cmd: 'ip',
      args: ['netns', 'del', 'initless-x'],
      options: { okCodes: [0, 1, 255] },
    })
  })

  test('a failure settling the links deletes the namespace and rethrows', async () => {
    const boom = new InitlessError('ERR_COMMAND_FAILED', 'ip -batch -: exit 1')
    const { run, calls } = fakeRunner((_call, i) => (i === 2 ? boom : undefined))
    const net = createNetworkManager({ run, settings })
    await assert.rejects(net.create('initless-z', '10.213.0.9'), (err) => err === boom)
    assert.deepEqual(calls.at(-1), {
      cmd: 'ip',
      args: ['netns', 'del', 'initless-z'],
      options: { okCodes: [0, 1, 255] },
    })
    assert.equal(calls.length, 4)
  })

  test('a failure on the host side stops there', async () => {
    const boom = new Error('ip: exit 2')
    const { run, calls } = fakeRunner(() => boom)
    const net = createNetworkManager({ run, settings })
    await assert.rejects(net.create('initless-y', '10.213.0.9'), (err) => err === boom)
    assert.equal(calls.length, 1)
  })

  test('ensureBridge creates, addresses and raises a missing bridge', async () => {
    const { run, calls } = fakeRunner((_call, i) => (i === 0 ? { code: 1 } : undefined))
    await createNetworkManager({ run, settings }).ensureBridge()
    assert.deepEqual(
      calls.map((c) => [c.cmd, ...c.args]),
      [
        ['ip', '-o', 'addr', 'show', 'dev', 'initless0'],
        ['ip', 'link', 'add', 'initless0', 'type', 'bridge'],
        ['ip', 'addr', 'replace', '10.213.0.1/16', 'dev', 'initless0'],
        ['ip', 'link', 'set', 'initless0', 'address', '02:42:0a:d5:00:01', 'up'],
      ],
    )
  })

  test('ensureBridge leaves an already addressed bridge alone but sets it up', async () => {
    const shown = '5: initless0    inet 10.213.0.1/16 brd 10.213.255.255 scope global initless0\n'
    const { run, calls } = fakeRunner((_call, i) => (i === 0 ? { stdout: shown } : undefined))
    await createNetworkManager({ run, settings }).ensureBridge()
    assert.deepEqual(
      calls.map((c) => [c.cmd, ...c.args]),
      [
        ['ip', '-o', 'addr', 'show', 'dev', 'initless0'],
        ['ip', 'link', 'set', 'initless0', 'address', '02:42:0a:d5:00:01', 'up'],
      ],
    )
  })

  test('with the sandbox helper: create on the namespace helper, destroy on the teardown one, no commands', async () => {
    const { run, calls } = fakeRunner()
    const seen: { lane: string; req: HelperRequest }[] = []
    const lane = (name: string): SandboxHelper => ({
      request: async (req) => void seen.push({ lane: name, req }),
      spawn: () => Promise.reject(new Error('not used')),
      processId: () => undefined,
      close: () => {},
    })
    const helpers: SandboxHelpers = {
      setup: lane('setup'),
      namespaces: lane('namespaces'),
      teardown: lane('teardown'),
    }
    const net = createNetworkManager({ run, settings, helpers })
    const handle = await net.create('initless-abc', '10.213.0.7')
    const veth = vethName('initless-abc')
    assert.deepEqual(handle, {
      name: 'initless-abc',
      path: '/var/run/netns/initless-abc',
      ip: '10.213.0.7',
      veth,
    })
    await net.destroy('initless-abc')
    assert.deepEqual(seen, [
      {
        lane: 'namespaces',
        req: {
          op: 'netns-create',
          args: [
            '/var/run/netns/initless-abc',
            veth,
            '02:42:0a:d5:00:07',
            '10.213.0.7/16',
            '10.213.0.1',
            'initless0',
          ],
        },
      },
      { lane: 'teardown', req: { op: 'netns-delete', args: ['/var/run/netns/initless-abc', veth] } },
    ])
    assert.deepEqual(calls, [])
  })

  test('an instance denied egress: its ild veth is created and deleted by name', async () => {
    const seen: HelperRequest[] = []
    const lane: SandboxHelper = {
      request: async (req) => void seen.push(req),
      spawn: () => Promise.reject(new Error('not used')),
      processId: () => undefined,
      close: () => {},
    }
    const net = createNetworkManager({
      run: fakeRunner().run,
      settings,
      helpers: { setup: lane, namespaces: lane, teardown: lane },
    })
    const handle = await net.create('initless-d', '10.213.0.9', 'deny')
    const veth = vethName('initless-d', 'deny')
    assert.equal(handle.veth, veth)
    await net.destroy(handle.name, handle.veth)
    assert.deepEqual(
      seen.map((r) => r.args[1]),
      [veth, veth],
    )
  })

  test('destroy deletes the namespace, then the host veth, tolerating both being gone', async () => {
    const { run, calls } = fakeRunner()
    await createNetworkManager({ run, settings }).destroy('initless-z')
    assert.deepEqual(calls, [
      { cmd: 'ip', args: ['netns', 'del', 'initless-z'], options: { okCodes: [0, 1, 255] } },
      { cmd: 'ip', args: ['link', 'del', vethName('initless-z')], options: { okCodes: [0, 1, 2, 255] } },
    ])
  })

  test('list keeps the namespaces with the prefix', async () => {
    const stdout = 'initless-a (id: 3)\nother\ninitless-b\n\n'
    const { run } = fakeRunner(() => ({ stdout }))
    assert.deepEqual(await createNetworkManager({ run, settings }).list('initless-'), [
      'initless-a',
      'initless-b',
    ])
  })

  test('an invalid subnet fails at construction', () => {
    const { run } = fakeRunner()
    assert.throws(
      () => createNetworkManager({ run, settings: { bridge: 'b', subnet: '10.0.0.0/4' } }),
      /invalid subnet/,
    )
  })
})
