import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { fakeRunner } from './exec-fake.ts'
import {
  createFirewall,
  LINK_LOCAL,
  parseSave,
  policyRules,
  policyRules6,
  policyStatus,
  reconcileScript,
  removalScript,
} from './firewall.ts'

const settings = { bridge: 'initless0', subnet: '10.213.0.0/16' }
const set = policyRules(settings)

/** What `iptables-save` printed after the policy was applied in a fresh namespace holding Docker's
 * DOCKER-USER jump (iptables 1.8.9, nf_tables): the format the parser meets. */
const APPLIED = `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:INITLESS-FWD-initless0 - [0:0]
:INITLESS-IN-initless0 - [0:0]
-A INPUT -i initless0 -m comment --comment initless -j INITLESS-IN-initless0
-A FORWARD -m comment --comment initless -j INITLESS-FWD-initless0
-A FORWARD -j DOCKER-USER
-A INITLESS-FWD-initless0 -o initless0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment initless -j ACCEPT
-A INITLESS-FWD-initless0 -i initless0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment initless -j ACCEPT
-A INITLESS-FWD-initless0 -i initless0 -o initless0 -m comment --comment initless -j DROP
-A INITLESS-FWD-initless0 -i initless0 -m realm --realm 0xd5 -m comment --comment initless -j DROP
-A INITLESS-FWD-initless0 -d 169.254.0.0/16 -i initless0 -m comment --comment initless -j DROP
-A INITLESS-FWD-initless0 -i initless0 -m conntrack --ctstate DNAT -m comment --comment initless -j DROP
-A INITLESS-FWD-initless0 -i initless0 -m physdev --physdev-in ild+ -m comment --comment initless -j DROP
-A INITLESS-FWD-initless0 -i initless0 -m comment --comment initless -j ACCEPT
-A INITLESS-FWD-initless0 -o initless0 -m comment --comment initless -j ACCEPT
-A INITLESS-IN-initless0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment initless -j ACCEPT
-A INITLESS-IN-initless0 -m comment --comment initless -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:INITLESS-NAT-initless0 - [0:0]
-A POSTROUTING -s 10.213.0.0/16 -m comment --comment initless -j INITLESS-NAT-initless0
-A INITLESS-NAT-initless0 ! -o initless0 -m comment --comment initless -j MASQUERADE
COMMIT
`

/** The same for ip6tables (no Docker rules there). */
const APPLIED6 = `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:INITLESS-FWD-initless0 - [0:0]
:INITLESS-IN-initless0 - [0:0]
-A INPUT -i initless0 -m comment --comment initless -j INITLESS-IN-initless0
-A FORWARD -m comment --comment initless -j INITLESS-FWD-initless0
-A INITLESS-FWD-initless0 -i initless0 -m comment --comment initless -j DROP
-A INITLESS-FWD-initless0 -o initless0 -m comment --comment initless -j DROP
-A INITLESS-IN-initless0 -m comment --comment initless -j DROP
COMMIT
`

/** A host with Docker and nothing of initless's. */
const DOCKER_ONLY = `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -d 10.213.0.0/16 -m comment --comment initless -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
`

const lines = (script: string) => script.split('\n').filter(Boolean)
const edits = (script: string) => lines(script).filter((l) => /^-[DI] /.test(l))

describe('policyRules', () => {
  const fwd = set.chains.find((c) => c.name === 'INITLESS-FWD-initless0')?.rules.map((r) => r.join(' ')) ?? []
  test('replies pass first, then instance-to-instance (here, other hosts), link-local, DNAT, denied egress drop', () => {
    assert.match(fwd[0] ?? '', /^-o initless0 -m conntrack --ctstate RELATED,ESTABLISHED .*-j ACCEPT$/)
    assert.match(fwd[1] ?? '', /^-i initless0 -m conntrack --ctstate RELATED,ESTABLISHED .*-j ACCEPT$/)
    assert.match(fwd[2] ?? '', /^-i initless0 -o initless0 .*-j DROP$/)
    assert.match(fwd[3] ?? '', /^-i initless0 -m realm --realm 0xd5 .*-j DROP$/)
    assert.match(fwd[4] ?? '', new RegExp(`-d ${LINK_LOCAL} .*-j DROP$`))
    assert.match(fwd[5] ?? '', /--ctstate DNAT .*-j DROP$/)
    assert.match(fwd[6] ?? '', /--physdev-in ild\+ .*-j DROP$/)
    assert.match(fwd[7] ?? '', /^-i initless0 -m comment --comment initless -j ACCEPT$/)
    assert.match(fwd[8] ?? '', /^-o initless0 -m comment --comment initless -j ACCEPT$/)
  })
  test('every rule and jump carries the comment', () => {
    for (const r of [...set.chains.flatMap((c) => c.rules), ...set.jumps.map((j) => j.args)])
      assert.match(r.join(' '), /-m comment --comment initless/)
  })
  test('the host accepts only replies from the bridge; egress is masqueraded', () => {
    const input = set.chains.find((c) => c.name === 'INITLESS-IN-initless0')?.rules.map((r) => r.join(' '))
    assert.deepEqual(input, [
      '-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment initless -j ACCEPT',
      '-m comment --comment initless -j DROP',
    ])
    const jumps = set.jumps.map((j) => `${j.table} ${j.chain} ${j.args.join(' ')}`)
    assert.ok(
      jumps.includes('filter INPUT -i initless0 -m comment --comment initless -j INITLESS-IN-initless0'),
    )
    assert.ok(
      jumps.includes(
        'nat POSTROUTING -s 10.213.0.0/16 -m comment --comment initless -j INITLESS-NAT-initless0',
      ),
    )
  })
  test('chains are named after the bridge (executors with other bridges keep theirs)', () => {
    const other = policyRules({ bridge: 'ilt9', subnet: '10.9.0.0/24' })
    assert.deepEqual(
      other.chains.map((c) => c.name),
      ['INITLESS-FWD-ilt9', 'INITLESS-IN-ilt9', 'INITLESS-NAT-ilt9'],
    )
  })
})

describe('parseSave', () => {
  test('reads chains and their rules per table, quoted words unquoted', () => {
    const t = parseSave(`${APPLIED}*mangle\n:X - [0:0]\n-A X -m comment --comment "a b" -j RETURN\nCOMMIT\n`)
    assert.equal(t.get('filter')?.get('FORWARD')?.length, 2)
    assert.equal(t.get('filter')?.get('INITLESS-FWD-initless0')?.length, 9)
    assert.deepEqual(t.get('nat')?.get('PREROUTING'), [])
    assert.deepEqual((t as Map<string, Map<string, string[][]>>).get('mangle')?.get('X'), [
      ['-m', 'comment', '--comment', 'a b', '-j', 'RETURN'],
    ])
  })
})

describe('reconcileScript', () => {
  const jumpLine = (chain: string, target: string, extra = '') =>
    `-A ${chain} ${extra}-m comment --comment initless -j ${target}`
  const cases: { name: string; saved: string; want: string[] }[] = [
    {
      name: 'nothing yet: every jump inserted first',
      saved: DOCKER_ONLY,
      want: [
        '-I FORWARD 1 -m comment --comment initless -j INITLESS-FWD-initless0',
        '-I INPUT 1 -i initless0 -m comment --comment initless -j INITLESS-IN-initless0',
        '-I POSTROUTING 1 -s 10.213.0.0/16 -m comment --comment initless -j INITLESS-NAT-initless0',
      ],
    },
    { name: 'applied: no jump touched', saved: APPLIED, want: [] },
    {
      name: "a jump behind Docker's: moved first",
      saved: APPLIED.replace(
        '-A FORWARD -m comment --comment initless -j INITLESS-FWD-initless0\n-A FORWARD -j DOCKER-USER\n',
        '-A FORWARD -j DOCKER-USER\n-A FORWARD -m comment --comment initless -j INITLESS-FWD-initless0\n',
      ),
      want: [
        '-D FORWARD -m comment --comment initless -j INITLESS-FWD-initless0',
        '-I FORWARD 1 -m comment --comment initless -j INITLESS-FWD-initless0',
      ],
    },
    {
      name: 'a duplicated jump: both deleted, one inserted',
      saved: APPLIED.replace(
        '-A FORWARD -j DOCKER-USER\n',
        `${jumpLine('FORWARD', 'INITLESS-FWD-initless0')}\n-A FORWARD -j DOCKER-USER\n`,
      ),
      want: [
        '-D FORWARD -m comment --comment initless -j INITLESS-FWD-initless0',
        '-D FORWARD -m comment --comment initless -j INITLESS-FWD-initless0',
        '-I FORWARD 1 -m comment --comment initless -j INITLESS-FWD-initless0',
      ],
    },
    {
      name: 'a stale jump (another subnet): replaced',
      saved: APPLIED.replace('-s 10.213.0.0/16', '-s 10.99.0.0/16'),
      want: [
        '-D POSTROUTING -s 10.99.0.0/16 -m comment --comment initless -j INITLESS-NAT-initless0',
        '-I POSTROUTING 1 -s 10.213.0.0/16 -m comment --comment initless -j INITLESS-NAT-initless0',
      ],
    },
    {
      name: 'a jump removed by hand: restored',
      saved: APPLIED.replace(`${jumpLine('INPUT', 'INITLESS-IN-initless0', '-i initless0 ')}\n`, ''),
      want: ['-I INPUT 1 -i initless0 -m comment --comment initless -j INITLESS-IN-initless0'],
    },
  ]
  for (const c of cases)
    test(c.name, () => {
      const script = reconcileScript(set, c.saved)
      assert.deepEqual(edits(script), c.want)
      // Our chains are always declared (created, or flushed) and refilled whole.
      for (const chain of set.chains) {
        assert.ok(lines(script).includes(`:${chain.name} - [0:0]`))
        assert.equal(
          lines(script).filter((l) => l.startsWith(`-A ${chain.name} `)).length,
          chain.rules.length,
        )
      }
      // Nothing else is ever named: not Docker's rules, not peers.ts's commented DOCKER-USER rules.
      assert.ok(!/DOCKER|docker0|172\.17/.test(script))
    })
})

describe('removalScript', () => {
  test('deletes the jumps, then flushes and deletes the chains; nothing else', () => {
    assert.deepEqual(lines(removalScript(set, APPLIED)), [
      '*filter',
      '-D INPUT -i initless0 -m comment --comment initless -j INITLESS-IN-initless0',
      '-D FORWARD -m comment --comment initless -j INITLESS-FWD-initless0',
      '-F INITLESS-FWD-initless0',
      '-X INITLESS-FWD-initless0',
      '-F INITLESS-IN-initless0',
      '-X INITLESS-IN-initless0',
      'COMMIT',
      '*nat',
      '-D POSTROUTING -s 10.213.0.0/16 -m comment --comment initless -j INITLESS-NAT-initless0',
      '-F INITLESS-NAT-initless0',
      '-X INITLESS-NAT-initless0',
      'COMMIT',
    ])
  })
  test('nothing of ours: nothing to do', () => {
    assert.equal(removalScript(set, DOCKER_ONLY), '')
  })
  test("another bridge's chains are not ours to remove", () => {
    assert.equal(removalScript(policyRules({ bridge: 'ilt9', subnet: '10.9.0.0/24' }), APPLIED), '')
  })
})

describe('policyStatus', () => {
  const cases: { name: string; saved: string; problems: string[] }[] = [
    { name: 'applied', saved: APPLIED, problems: [] },
    {
      name: 'nothing',
      saved: DOCKER_ONLY,
      problems: [
        'chain INITLESS-FWD-initless0 missing',
        'chain INITLESS-IN-initless0 missing',
        'chain INITLESS-NAT-initless0 missing',
        'FORWARD does not jump to INITLESS-FWD-initless0 first',
        'INPUT does not jump to INITLESS-IN-initless0 first',
        'POSTROUTING does not jump to INITLESS-NAT-initless0 first',
      ],
    },
    {
      name: 'a rule deleted by hand',
      saved: APPLIED.replace(/-A INITLESS-IN-initless0 -m comment --comment initless -j DROP\n/, ''),
      problems: ['chain INITLESS-IN-initless0 differs from the policy'],
    },
  ]
  for (const c of cases)
    test(c.name, () => {
      const s = policyStatus(set, c.saved)
      assert.deepEqual(s.problems, c.problems)
      assert.equal(s.applied, c.problems.length === 0)
    })
})

describe('createFirewall', () => {
  const make = (opts: { saved: string; saved6?: string; ports?: string; netfilter?: boolean }) => {
    const sysctls: string[] = []
    const fake = fakeRunner((call) => {
      if (call.cmd === 'iptables-save') return { stdout: opts.saved }
      if (call.cmd === 'ip6tables-save') return { stdout: opts.saved6 ?? '' }
      if (call.cmd === 'ip') return { stdout: opts.ports ?? '', code: 0 }
      return undefined
    })
    const fw = createFirewall({
      run: fake.run,
      settings,
      sysctl: async (k, v) => void sysctls.push(`${k}=${v}`),
      bridgeNetfilter: async () => opts.netfilter ?? true,
    })
    return { fw, calls: fake.calls, sysctls }
  }

  test('apply: br_netfilter loaded if missing, forwarding on, one restore per family', async () => {
    const { fw, calls, sysctls } = make({ saved: DOCKER_ONLY, netfilter: false })
    await fw.apply()
    assert.deepEqual(
      calls.map((c) => [c.cmd, ...c.args].join(' ')),
      [
        'modprobe br_netfilter',
        'iptables-save',
        'iptables-restore -w --noflush',
        'ip6tables-save',
        'ip6tables-restore -w --noflush',
      ],
    )
    assert.deepEqual(sysctls, [
      'net.bridge.bridge-nf-call-iptables=1',
      'net.bridge.bridge-nf-call-ip6tables=1',
      'net.ipv4.ip_forward=1',
    ])
    assert.equal(calls[2]?.options?.input, reconcileScript(set, DOCKER_ONLY))
    assert.equal(calls[4]?.options?.input, reconcileScript(policyRules6(settings), ''))
  })

  test('apply: br_netfilter already there, no modprobe', async () => {
    const { fw, calls } = make({ saved: APPLIED, saved6: APPLIED6 })
    await fw.apply()
    assert.deepEqual(
      calls.map((c) => c.cmd),
      ['iptables-save', 'iptables-restore', 'ip6tables-save', 'ip6tables-restore'],
    )
    // Applied already: the chains are refilled, no jump is touched.
    assert.deepEqual(edits(String(calls[3]?.options?.input)), [])
  })

  test('remove: kept while other instances are on the bridge', async () => {
    const { fw, calls } = make({ saved: APPLIED, ports: '7: ilv1234abcd@if2: <UP> master initless0\n' })
    assert.deepEqual(await fw.remove(), { removed: false, reason: '1 other instance(s) still on initless0' })
    assert.ok(!calls.some((c) => c.cmd === 'iptables-restore'))
  })

  test('remove: the removal script per family when the bridge is empty', async () => {
    const { fw, calls } = make({ saved: APPLIED, saved6: APPLIED6 })
    assert.deepEqual(await fw.remove(), { removed: true })
    const restores = calls.filter((c) => c.cmd.endsWith('-restore'))
    assert.deepEqual(
      restores.map((c) => [c.cmd, c.options?.input]),
      [
        ['iptables-restore', removalScript(set, APPLIED)],
        ['ip6tables-restore', removalScript(policyRules6(settings), APPLIED6)],
      ],
    )
    assert.match(String(restores[1]?.options?.input), /^-X INITLESS-IN-initless0$/m)
  })

  test('remove: nothing left of ours, no iptables-restore', async () => {
    const { fw, calls } = make({ saved: DOCKER_ONLY })
    await fw.remove()
    assert.ok(!calls.some((c) => c.cmd === 'iptables-restore'))
  })

  test("status reads the kernel's rules", async () => {
    assert.deepEqual(await make({ saved: APPLIED, saved6: APPLIED6 }).fw.status(), {
      applied: true,
      problems: [],
    })
    const v6missing = await make({ saved: APPLIED }).fw.status()
    assert.equal(v6missing.applied, false)
    assert.match(v6missing.problems[0] ?? '', /^chain INITLESS-FWD-initless0 missing \(IPv6\)$/)
    assert.equal((await make({ saved: DOCKER_ONLY, saved6: APPLIED6 }).fw.status()).applied, false)
  })
})
