import assert from 'node:assert/strict'
import { tmpdir } from 'node:os'
import { describe, test } from 'node:test'
import type { EngineInfo } from '../executor/adapters/docker.ts'
import type { CommandRunner, RunResult } from '../executor/adapters/exec.ts'
import type { PolicyStatus } from '../executor/adapters/firewall.ts'
import type { RestorePath } from '../executor/sandbox/restore-path.ts'
import type { SelfTestStep } from '../executor/runtimes/selftest.ts'
import { InitlessError } from '../shared/errors.ts'
import { formatDoctorReport, runDoctor, type CheckResult, type DoctorDeps } from './doctor.ts'

const CRIU = '/usr/local/sbin/criu'
const HELPER = '/usr/local/lib/initless/initless-sandbox-helper'
const RUNC = '/usr/bin/runc'
const REDIS_URL = 'redis://127.0.0.1:6379'

type Answer = Partial<RunResult> | Error

/** What a healthy host's runc and CRIU print. */
const HEALTHY: Record<string, Answer> = {
  [`${RUNC} --version`]: {
    stdout:
      'runc version 1.1.12\ncommit: v1.1.12-0-g51d5e946\nspec: 1.0.2-dev\ngo: go1.19.8\nlibseccomp: 2.5.4\n',
  },
  [`${CRIU} --version`]: { stdout: 'Version: 4.2.1\nGitID: v4.2.1\n' },
  [`${CRIU} check`]: { stdout: 'Looks good.\n' },
  [`${CRIU} check --feature uffd-noncoop`]: { stdout: 'uffd-noncoop is supported\n' },
  [HELPER]: { stdout: '1\tok\n' },
}

const ENGINE: EngineInfo = {
  serverVersion: '27.5.1',
  apiVersion: '1.47',
  experimental: true,
  cgroupDriver: 'cgroupfs',
}

const GOOD_STEPS: SelfTestStep[] = [
  { name: 'checkpoint', ok: true, ms: 120.4, detail: '' },
  { name: 'eager restore', ok: true, ms: 80.6, detail: '' },
  { name: 'lazy restore', ok: true, ms: 40, detail: '' },
]

interface Harness {
  deps: DoctorDeps
  commands: string[]
  counts: { dockerInfo: number; redisVersion: number; selfTest: number }
}

function harness(
  over: {
    answers?: Record<string, Answer>
    dockerInfo?: () => Promise<EngineInfo>
    redisVersion?: () => Promise<string>
    selfTest?: (() => Promise<SelfTestStep[]>) | null
    nodeVersion?: string
    minFreeDisk?: number
    sandboxHelper?: DoctorDeps['sandboxHelper']
    restorePath?: RestorePath
    thpMode?: string
    rcuExpedited?: boolean | 'absent'
  } = {},
): Harness {
  const answers = { ...HEALTHY, ...over.answers }
  const commands: string[] = []
  const counts = { dockerInfo: 0, redisVersion: 0, selfTest: 0 }
  const run: CommandRunner = async (cmd, args, options) => {
    const line = [cmd, ...args].join(' ')
    commands.push(line)
    const a = answers[line]
    if (a === undefined) throw new Error(`unexpected command: ${line}`)
    if (a instanceof Error) throw a
    const result = { code: 0, stdout: '', stderr: '', ms: 1, ...a }
    // Behave like the real runner: exit codes outside okCodes reject.
    if (!(options?.okCodes ?? [0]).includes(result.code)) {
      throw new InitlessError('ERR_COMMAND_FAILED', `${line}: exit ${result.code}`)
    }
    return result
  }
  const selfTest = over.selfTest === null ? undefined : (over.selfTest ?? (async () => GOOD_STEPS))
  const deps: DoctorDeps = {
    run,
    nodeVersion: over.nodeVersion ?? 'v20.19.0',
    criuBin: CRIU,
    runcBin: RUNC,
    stateDir: tmpdir(),
    minFreeDisk: over.minFreeDisk ?? 0,
    dockerInfo: () => {
      counts.dockerInfo++
      return (over.dockerInfo ?? (async () => ENGINE))()
    },
    redisVersion: () => {
      counts.redisVersion++
      return (over.redisVersion ?? (async () => '7.0.15'))()
    },
    redisUrl: REDIS_URL,
    sandboxHelper: over.sandboxHelper ?? { setting: 'auto', path: HELPER },
    restorePath: async () => over.restorePath ?? { direct: true, reason: 'cgroup v1', settled: true },
    thpMode: async () => over.thpMode ?? 'madvise',
    rcuExpedited: async () => (over.rcuExpedited === 'absent' ? undefined : (over.rcuExpedited ?? true)),
    ...(selfTest
      ? {
          selfTest: () => {
            counts.selfTest++
            return selfTest()
          },
        }
      : {}),
  }
  return { deps, commands, counts }
}

function byName(results: readonly CheckResult[], name: string): CheckResult {
  const r = results.find((c) => c.name === name)
  assert.ok(r, `no check named '${name}' in ${results.map((c) => c.name).join(', ')}`)
  return r
}

/** Checks that read the host's own /proc and disk rather than deps. */
const HOST_CHECKS = ['kernel features', 'disk', 'seccomp']

describe('runDoctor', () => {
  test('a healthy host: every check passes, the restore probe runs once', async () => {
    const h = harness()
    const results = await runDoctor(h.deps)
    assert.deepEqual(
      results.map((r) => r.name),
      [
        'node',
        'docker engine',
        'docker experimental',
        'runc',
        'seccomp',
        'criu version',
        'criu check',
        'lazy pages',
        'sandbox helper',
        'restore path',
        'lazy restores',
        'redis',
        'kernel features',
        'rcu grace periods',
        'disk',
        'restore probe',
      ],
    )
    // seccomp reads this host's /proc; runc's libseccomp comes from the answer above.
    const seccomp = byName(results, 'seccomp')
    if (seccomp.ok)
      assert.match(
        seccomp.detail,
        /^kernel filters, runc with libseccomp 2\.5\.4; default profile allows \d+ calls$/,
      )
    const details = Object.fromEntries(
      results.filter((r) => !HOST_CHECKS.includes(r.name)).map((r) => [r.name, [r.ok, r.detail, r.fix]]),
    )
    assert.deepEqual(details, {
      node: [true, 'Node.js 20.19.0', undefined],
      'docker engine': [true, 'Docker 27.5.1 (API 1.47, cgroup driver cgroupfs)', undefined],
      'docker experimental': [true, 'experimental features on', undefined],
      runc: [true, 'runc 1.1.12', undefined],
      'criu version': [true, 'CRIU 4.2.1', undefined],
      'criu check': [true, 'Looks good', undefined],
      'lazy pages': [true, 'uffd-noncoop supported', undefined],
      'sandbox helper': [true, HELPER, undefined],
      'restore path': [true, 'direct (cgroup v1)', undefined],
      'lazy restores': [true, 'transparent huge pages madvise', undefined],
      redis: [true, 'Redis 7.0.15', undefined],
      'rcu grace periods': [
        true,
        'expedited: the cgroup moves and mount changes of a restore do not wait for the scheduler tick',
        undefined,
      ],
      'restore probe': [true, 'checkpoint 120 ms; eager restore 81 ms; lazy restore 40 ms', undefined],
    })
    // The disk check passes with no minimum; kernel features depend on the host running the test.
    assert.equal(byName(results, 'disk').ok, true)
    assert.match(byName(results, 'disk').detail, / free under /)
    const kernel = byName(results, 'kernel features')
    assert.match(kernel.detail, kernel.ok ? /^kernel \S+, overlayfs, cgroups$/ : /^missing: /)
    assert.deepEqual(h.commands, [
      `${RUNC} --version`,
      `${CRIU} --version`,
      `${CRIU} check`,
      `${CRIU} check --feature uffd-noncoop`,
      HELPER,
    ])
    // The engine is asked once for both Docker checks.
    assert.deepEqual(h.counts, { dockerInfo: 1, redisVersion: 1, selfTest: 1 })
    for (const r of results) assert.ok(r.ms >= 0)
  })

  test('restore path: says which path and why; a device filter the kernel refuses fails with the fix', async () => {
    const cases: { path: RestorePath; ok: boolean; detail: RegExp }[] = [
      {
        path: { direct: true, reason: 'cgroup v1', settled: true },
        ok: true,
        detail: /^direct \(cgroup v1\)$/,
      },
      {
        path: { direct: true, reason: 'cgroup v2, eBPF device filter', settled: true },
        ok: true,
        detail: /^direct \(cgroup v2, eBPF device filter\)$/,
      },
      {
        path: { direct: false, reason: 'cgroup v2, sandbox helper off', settled: true },
        ok: true,
        detail: /^runc restore \(cgroup v2, sandbox helper off\)$/,
      },
      {
        path: {
          direct: false,
          reason: 'cgroup v2, eBPF device filter unavailable',
          filterError: 'sandbox helper device-filter-check: load the device filter: Operation not permitted',
          settled: true,
        },
        ok: false,
        detail: /^runc restore \(cgroup v2, eBPF device filter unavailable\): .*Operation not permitted$/,
      },
    ]
    for (const c of cases) {
      const r = byName(await runDoctor(harness({ selfTest: null, restorePath: c.path }).deps), 'restore path')
      assert.equal(r.ok, c.ok, c.path.reason)
      assert.match(r.detail, c.detail)
      if (!c.ok) assert.match(r.fix!, /CONFIG_CGROUP_BPF.*runc restore/)
    }
  })

  test('lazy restores: THP always fails unless CRIU is spawned by the sandbox helper', async () => {
    const RUNC_V2: RestorePath = { direct: false, reason: 'cgroup v2, sandbox helper off', settled: true }
    const NO_HELPER = { setting: 'off', path: undefined }
    const cases: {
      thpMode?: string
      restorePath?: RestorePath
      sandboxHelper?: DoctorDeps['sandboxHelper']
      ok: boolean
      detail: RegExp
    }[] = [
      {
        thpMode: 'madvise',
        restorePath: RUNC_V2,
        sandboxHelper: NO_HELPER,
        ok: true,
        detail: /pages madvise$/,
      },
      { thpMode: 'always', ok: true, detail: /always, CRIU spawned with them off$/ },
      {
        thpMode: 'always',
        restorePath: RUNC_V2,
        sandboxHelper: NO_HELPER,
        ok: false,
        detail: /and runc restore:/,
      },
      {
        thpMode: 'always',
        sandboxHelper: NO_HELPER,
        ok: false,
        detail: /criu restore is started without the sandbox helper/,
      },
    ]
    for (const c of cases) {
      const r = byName(await runDoctor(harness({ selfTest: null, ...c }).deps), 'lazy restores')
      assert.equal(r.ok, c.ok, JSON.stringify(c))
      assert.match(r.detail, c.detail)
      if (!c.ok)
        assert.match(r.fix!, /echo madvise > \/sys\/kernel\/mm\/transparent_hugepage\/enabled.*eager/)
    }
  })

  test('rcu grace periods: normal passes with advice, expedited and absent pass plain', async () => {
    const normal = byName(
      await runDoctor(harness({ selfTest: null, rcuExpedited: false }).deps),
      'rcu grace periods',
    )
    assert.equal(normal.ok, true)
    assert.match(normal.detail, /^normal: every restore waits for RCU grace periods/)
    assert.match(normal.warn!, /^echo 1 > \/sys\/kernel\/rcu_expedited .*INITLESS_KERNEL_TUNING=0/)
    const expedited = byName(await runDoctor(harness({ selfTest: null }).deps), 'rcu grace periods')
    assert.deepEqual([expedited.ok, expedited.warn], [true, undefined])
    assert.match(expedited.detail, /^expedited/)
    const absent = byName(
      await runDoctor(harness({ selfTest: null, rcuExpedited: 'absent' }).deps),
      'rcu grace periods',
    )
    assert.deepEqual(
      [absent.ok, absent.warn, absent.detail],
      [true, undefined, 'no /sys/kernel/rcu_expedited on this kernel'],
    )
  })

  test('sandbox helper: missing fails with the provision fix; off passes without running one', async () => {
    const missing = byName(
      await runDoctor(harness({ selfTest: null, sandboxHelper: { setting: 'auto', path: undefined } }).deps),
      'sandbox helper',
    )
    assert.equal(missing.ok, false)
    assert.match(missing.detail, /none installed.*60-80 ms/)
    assert.match(missing.fix!, /provision\.sh.*sandbox-helper\.c/)
    const h = harness({ selfTest: null, sandboxHelper: { setting: 'off', path: undefined } })
    const off = byName(await runDoctor(h.deps), 'sandbox helper')
    assert.equal(off.ok, true)
    assert.match(off.detail, /^off /)
    assert.ok(!h.commands.includes(HELPER))
    const broken = byName(
      await runDoctor(harness({ selfTest: null, answers: { [HELPER]: { stdout: '' } } }).deps),
      'sandbox helper',
    )
    assert.equal(broken.ok, false)
    assert.match(broken.detail, /answered "" to a ping/)
    const built = byName(
      await runDoctor(
        harness({ selfTest: null, sandboxHelper: { setting: 'auto', path: HELPER, buildId: '0123456789ab' } })
          .deps,
      ),
      'sandbox helper',
    )
    assert.equal(built.ok, true)
    assert.equal(built.detail, `${HELPER} (build 0123456789ab)`)
  })

  test('network policy: applied, not set (no executor), incomplete (fails with the fix), unreadable', async () => {
    const cases: { name: string; status: () => Promise<PolicyStatus>; ok: boolean; detail: RegExp }[] = [
      {
        name: 'applied',
        status: async () => ({ applied: true, problems: [] }),
        ok: true,
        detail: /^applied on initless0$/,
      },
      {
        name: 'nothing set',
        status: async () => ({
          applied: false,
          problems: [
            'chain INITLESS-FWD-initless0 missing',
            'FORWARD does not jump to INITLESS-FWD-initless0 first',
          ],
        }),
        ok: true,
        detail: /^not set on initless0 \(no executor running/,
      },
      {
        name: 'tampered',
        status: async () => ({
          applied: false,
          problems: ['chain INITLESS-IN-initless0 differs from the policy'],
        }),
        ok: false,
        detail: /^incomplete on initless0: chain INITLESS-IN-initless0 differs/,
      },
      {
        name: 'no iptables',
        status: () => Promise.reject(new Error('spawn iptables-save ENOENT')),
        ok: false,
        detail: /iptables-save failed: spawn iptables-save ENOENT/,
      },
    ]
    for (const c of cases) {
      const { deps } = harness({ selfTest: null })
      const r = byName(
        await runDoctor({ ...deps, networkPolicy: { bridge: 'initless0', status: c.status } }),
        'network policy',
      )
      assert.equal(r.ok, c.ok, c.name)
      assert.match(r.detail, c.detail, c.name)
      if (!r.ok) assert.match(r.fix!, /provision\.sh.*restart the executor/)
    }
  })

  test('an old Node.js fails', async () => {
    const results = await runDoctor(harness({ nodeVersion: 'v18.19.0', selfTest: null }).deps)
    const node = byName(results, 'node')
    assert.equal(node.ok, false)
    assert.equal(node.detail, 'Node.js 18.19.0 is older than 20.10.0')
    assert.equal(node.fix, 'install Node.js >= 20.10.0')
  })

  test('the image registry: required when INITLESS_IMAGE_REGISTRY names one, reported either way', async () => {
    const answering = new Set(['127.0.0.1:5000'])
    const probe = (address: string) =>
      answering.has(address)
        ? Promise.resolve('registry API registry/2.0')
        : Promise.reject(new Error('ECONNREFUSED'))
    const check = async (address: string) =>
      byName(
        await runDoctor({ ...harness({ selfTest: null }).deps, imageRegistry: { address, probe } }),
        'image registry',
      )
    const set = await check('127.0.0.1:5000')
    assert.equal(set.ok, true)
    assert.match(set.detail, /^127\.0\.0\.1:5000 \(registry API registry\/2\.0\): deploys push/)
    const down = await check('10.0.0.9:5000')
    assert.equal(down.ok, false)
    assert.match(down.detail, /INITLESS_IMAGE_REGISTRY 10\.0\.0\.9:5000 does not answer: ECONNREFUSED/)
    assert.match(down.fix!, /provision\.sh/)
    const unset = await check('')
    assert.equal(unset.ok, true)
    assert.match(unset.detail, /unset: images stay on the host that built them.*answers at 127\.0\.0\.1:5000/)
    answering.clear()
    assert.match((await check('')).detail, /none answers at 127\.0\.0\.1:5000/)
  })

  test('Redis 6.0 is too old', async () => {
    const results = await runDoctor(harness({ redisVersion: async () => '6.0.16' }).deps)
    const redis = byName(results, 'redis')
    assert.equal(redis.ok, false)
    assert.equal(redis.detail, 'Redis 6.0.16 is older than 6.2.0 (BullMQ needs it)')
    assert.match(
      redis.fix!,
      /^start Redis >= 6\.2\.0 at redis:\/\/127\.0\.0\.1:6379 .*provision\.sh.*INITLESS_REDIS_URL/,
    )
    // Redis is not a prerequisite of the restore probe.
    assert.equal(byName(results, 'restore probe').ok, true)
  })

  test('Redis down says it does not answer', async () => {
    const results = await runDoctor(
      harness({
        redisVersion: async () => {
          throw new Error('connect ECONNREFUSED 127.0.0.1:6379')
        },
      }).deps,
    )
    assert.equal(
      byName(results, 'redis').detail,
      'Redis at redis://127.0.0.1:6379 does not answer: connect ECONNREFUSED 127.0.0.1:6379',
    )
  })

  test('Docker not in experimental mode', async () => {
    const results = await runDoctor(
      harness({ dockerInfo: async () => ({ ...ENGINE, experimental: false }) }).deps,
    )
    assert.equal(byName(results, 'docker engine').ok, true)
    const exp = byName(results, 'docker experimental')
    assert.equal(exp.ok, false)
    assert.equal(exp.detail, 'the Docker engine is not in experimental mode (needed for its checkpoint API)')
    assert.match(exp.fix!, /"experimental": true in \/etc\/docker\/daemon\.json.*provision\.sh/)
  })

  test('Docker down: both Docker checks fail, the engine check says it does not answer', async () => {
    const h = harness({
      dockerInfo: async () => {
        throw new Error('connect ENOENT /var/run/docker.sock')
      },
    })
    const results = await runDoctor(h.deps)
    const engine = byName(results, 'docker engine')
    const exp = byName(results, 'docker experimental')
    assert.deepEqual(
      [engine.ok, engine.detail],
      [false, 'the Docker engine does not answer: connect ENOENT /var/run/docker.sock'],
    )
    assert.match(engine.fix!, /^start the Docker engine: .*provision\.sh/)
    assert.deepEqual([exp.ok, exp.detail], [false, 'cannot tell: the Docker engine does not answer'])
    assert.equal(h.counts.dockerInfo, 1)
  })

  test('CRIU 3.17: criu version fails with a fix naming provision.sh; the probe is skipped', async () => {
    const h = harness({
      answers: {
        [`${CRIU} --version`]: { stdout: 'Version: 3.17.1\n' },
        [`${CRIU} check`]: {
          code: 1,
          stderr: 'Error (criu/cr-check.c:1221): Kernel is missing some features\nsomething else\n',
        },
      },
    })
    const results = await runDoctor(h.deps)
    const version = byName(results, 'criu version')
    assert.equal(version.ok, false)
    assert.equal(version.detail, `CRIU 3.17.1 (${CRIU}) is older than 4.2.0`)
    assert.match(version.fix!, /bash scripts\/provision\.sh/)
    assert.match(version.fix!, /CRIU >= 4\.2\.0 must come first in PATH/)
    const check = byName(results, 'criu check')
    assert.equal(check.ok, false)
    assert.equal(check.detail, 'criu check: Error (criu/cr-check.c:1221): Kernel is missing some features')
    const probe = byName(results, 'restore probe')
    assert.deepEqual(
      { ok: probe.ok, detail: probe.detail, fix: probe.fix, ms: probe.ms },
      {
        ok: false,
        detail: 'skipped: criu version, criu check failed',
        fix: 'fix the checks above first',
        ms: 0,
      },
    )
    assert.equal(h.counts.selfTest, 0)
  })

  test('a runc built without libseccomp fails the seccomp check with its fix', async () => {
    const h = harness({
      answers: { [`${RUNC} --version`]: { stdout: 'runc version 1.1.12\nspec: 1.0.2-dev\n' } },
    })
    const r = byName(await runDoctor(h.deps), 'seccomp')
    assert.equal(r.ok, false)
    assert.match(
      r.detail,
      /was built without libseccomp: it cannot install a filter|the kernel has no seccomp/,
    )
    assert.match(r.fix ?? '', /CONFIG_SECCOMP_FILTER and runc built with libseccomp/)
  })

  const prerequisites: Array<[string, Record<string, Answer>, string, RegExp]> = [
    [
      'runc missing',
      { [`${RUNC} --version`]: new Error(`${RUNC}: spawn ${RUNC} ENOENT`) },
      'runc',
      /^\/usr\/bin\/runc: spawn \/usr\/bin\/runc ENOENT$/,
    ],
    [
      'runc too old',
      { [`${RUNC} --version`]: { stdout: 'runc version 1.0.3\n' } },
      'runc',
      /^runc 1\.0\.3 is older than 1\.1$/,
    ],
    [
      'runc version unreadable',
      { [`${RUNC} --version`]: { stdout: 'something else\n' } },
      'runc',
      /^cannot read the runc version from: something else$/,
    ],
    [
      'criu version unreadable',
      { [`${CRIU} --version`]: { stdout: 'criu, probably\n' } },
      'criu version',
      /^cannot read the CRIU version from: criu, probably$/,
    ],
    [
      'criu check exits 0 without "Looks good"',
      { [`${CRIU} check`]: { stdout: 'Warn: something\n' } },
      'criu check',
      /^criu check: exit 0$/,
    ],
    [
      'criu check exits 1',
      { [`${CRIU} check`]: { code: 1, stdout: '', stderr: 'Error: no CHECKPOINT_RESTORE\n' } },
      'criu check',
      /^criu check: Error: no CHECKPOINT_RESTORE$/,
    ],
  ]
  for (const [name, answers, check, detail] of prerequisites) {
    test(`${name}: '${check}' fails and the restore probe is skipped, not run`, async () => {
      const h = harness({ answers })
      const results = await runDoctor(h.deps)
      const r = byName(results, check)
      assert.equal(r.ok, false)
      assert.match(r.detail, detail)
      assert.ok(r.fix)
      assert.deepEqual(
        results.filter((c) => !c.ok && !HOST_CHECKS.includes(c.name)).map((c) => c.name),
        [check, 'restore probe'],
      )
      assert.equal(byName(results, 'restore probe').detail, `skipped: ${check} failed`)
      assert.equal(h.counts.selfTest, 0)
    })
  }

  test('lazy pages unsupported fails with its fix, but the restore probe still runs', async () => {
    const h = harness({
      answers: {
        [`${CRIU} check --feature uffd-noncoop`]: { code: 1, stderr: 'uffd-noncoop is not supported\n' },
      },
    })
    const results = await runDoctor(h.deps)
    const lazy = byName(results, 'lazy pages')
    assert.equal(lazy.ok, false)
    assert.equal(
      lazy.detail,
      'userfaultfd non-cooperative mode is not supported: uffd-noncoop is not supported',
    )
    assert.match(lazy.fix!, /restore policy eager/)
    assert.equal(h.counts.selfTest, 1)
  })

  test('a failed restore probe step is reported with its detail and a fix', async () => {
    const results = await runDoctor(
      harness({
        selfTest: async () => [
          { name: 'checkpoint', ok: true, ms: 100, detail: '' },
          { name: 'lazy restore', ok: false, ms: 5, detail: 'criu: Error (uffd.c:42): failed' },
        ],
      }).deps,
    )
    const probe = byName(results, 'restore probe')
    assert.equal(probe.ok, false)
    assert.equal(probe.detail, 'lazy restore: criu: Error (uffd.c:42): failed')
    assert.match(probe.fix!, /running as root/)
  })

  test('a restore probe with no steps is not a pass', async () => {
    const results = await runDoctor(harness({ selfTest: async () => [] }).deps)
    assert.equal(byName(results, 'restore probe').ok, false)
  })

  test('without a selfTest (--quick) there is no restore probe', async () => {
    const results = await runDoctor(harness({ selfTest: null }).deps)
    assert.ok(!results.some((r) => r.name === 'restore probe'))
  })

  test('too little free disk fails with the sizes', async () => {
    const results = await runDoctor(harness({ selfTest: null, minFreeDisk: Number.MAX_SAFE_INTEGER }).deps)
    const disk = byName(results, 'disk')
    assert.equal(disk.ok, false)
    assert.match(disk.detail, new RegExp(` free under ${tmpdir()}, below 8192 TiB$`))
    assert.match(disk.fix!, /INITLESS_STATE_DIR/)
  })
})

describe('formatDoctorReport', () => {
  test('failures get their detail lines and a fix: line; passes one line', () => {
    const report = formatDoctorReport([
      { name: 'node', ok: true, detail: 'Node.js 20.19.0', ms: 0 },
      {
        name: 'criu version',
        ok: false,
        detail: 'CRIU 3.17.1 is older than 4.2.0\nsecond line',
        fix: 'run provision.sh',
        ms: 1,
      },
      { name: 'redis', ok: false, detail: 'Redis down', ms: 1 },
    ])
    assert.equal(
      report,
      [
        `ok   ${'node'.padEnd(20)} Node.js 20.19.0`,
        `FAIL ${'criu version'.padEnd(20)} CRIU 3.17.1 is older than 4.2.0`,
        '       second line',
        '       fix: run provision.sh',
        `FAIL ${'redis'.padEnd(20)} Redis down`,
        '       fix: see above',
        '',
        '2 check(s) failed',
      ].join('\n'),
    )
  })

  test('an all-good report has no fix: lines and says so', () => {
    const report = formatDoctorReport([
      { name: 'node', ok: true, detail: 'Node.js 20.19.0', ms: 0 },
      { name: 'redis', ok: true, detail: 'Redis 7.0.15', ms: 0 },
    ])
    assert.ok(!report.includes('fix:'))
    assert.ok(report.endsWith('\nall checks passed'))
  })

  test('a passed check with advice is a warn line with an advice: line, counted in the summary', () => {
    const report = formatDoctorReport([
      { name: 'node', ok: true, detail: 'Node.js 20.19.0', ms: 0 },
      { name: 'rcu grace periods', ok: true, detail: 'normal', warn: 'echo 1 > it', ms: 0 },
    ])
    assert.equal(
      report,
      [
        `ok   ${'node'.padEnd(20)} Node.js 20.19.0`,
        `warn ${'rcu grace periods'.padEnd(20)} normal`,
        '       advice: echo 1 > it',
        '',
        'all checks passed (1 with advice)',
      ].join('\n'),
    )
  })

  test('a real failing run prints fix: for each failure', async () => {
    const results = await runDoctor(
      harness({
        redisVersion: async () => '6.0.16',
        answers: { [`${CRIU} --version`]: { stdout: 'Version: 3.17.1\n' } },
      }).deps,
    )
    const report = formatDoctorReport(results)
    const failed = results.filter((r) => !r.ok)
    assert.equal(report.match(/^ {7}fix: /gm)?.length, failed.length)
    assert.match(report, /^FAIL criu version {9}CRIU 3\.17\.1/m)
    assert.match(report, /fix: CRIU >= 4\.2\.0 must come first in PATH.*provision\.sh/)
    assert.ok(report.endsWith(`\n${failed.length} check(s) failed`))
  })
})

describe('the queue Redis check', () => {
  const DURABLE = { version: '7.0.15', appendonly: 'yes', appendfsync: 'always' }
  async function check(
    queue: { url: string; source: 'setting' | 'provisioned' | 'registry' },
    probe: () => Promise<{ version: string; appendonly?: string; appendfsync?: string }>,
  ): Promise<CheckResult> {
    const results = await runDoctor({ ...harness({ selfTest: null }).deps, queueRedis: { ...queue, probe } })
    // After the registry's Redis, before the image registry.
    assert.equal(results[results.findIndex((r) => r.name === 'redis') + 1]?.name, 'queue redis')
    return byName(results, 'queue redis')
  }
  const provisioned = { url: 'redis://127.0.0.1:6381', source: 'provisioned' } as const

  test('appendonly + always: passes without a warning', async () => {
    const r = await check(provisioned, async () => DURABLE)
    assert.equal(r.ok, true)
    assert.equal(r.warn, undefined)
    assert.equal(
      r.detail,
      'Redis 7.0.15 at redis://127.0.0.1:6381 (the queue Redis scripts/provision.sh starts): appendonly yes, appendfsync always (a 202 is on disk)',
    )
  })

  test('everysec: advice, not a failure', async () => {
    const r = await check({ url: 'redis://127.0.0.1:6379', source: 'setting' }, async () => ({
      ...DURABLE,
      appendfsync: 'everysec',
    }))
    assert.equal(r.ok, true)
    assert.match(
      r.detail,
      /appendonly yes, appendfsync everysec: an operating-system crash or power loss may lose/,
    )
    assert.match(r.warn!, /config set appendfsync always/)
    const report = formatDoctorReport([r])
    assert.match(
      report,
      /^warn queue redis {10}queues on redis:\/\/127\.0\.0\.1:6379 \(INITLESS_ASYNC_REDIS_URL\)/,
    )
    assert.match(report, /\n {7}advice: redis-cli -u redis:\/\/127\.0\.0\.1:6379 config set appendonly yes/)
    assert.ok(report.endsWith('\nall checks passed (1 with advice)'))
  })

  test('no AOF: a restart would lose the queues', async () => {
    const r = await check(provisioned, async () => ({
      ...DURABLE,
      appendonly: 'no',
      appendfsync: 'everysec',
    }))
    assert.equal(r.ok, true)
    assert.match(r.detail, /appendonly no, .*no AOF: a restart of Redis loses every queued invocation/)
    assert.match(r.warn!, /scripts\/provision\.sh/)
  })

  test('queues on the registry’s Redis: the fix is a Redis of their own', async () => {
    const r = await check({ url: 'redis://10.0.0.5:6379', source: 'registry' }, async () => ({
      ...DURABLE,
      appendfsync: 'everysec',
    }))
    assert.equal(r.ok, true)
    assert.match(r.warn!, /a Redis of their own .*INITLESS_ASYNC_REDIS_URL/)
  })

  test('CONFIG refused: advice, since it cannot tell', async () => {
    const r = await check(provisioned, async () => ({ version: '7.0.15' }))
    assert.equal(r.ok, true)
    assert.match(r.detail, /CONFIG GET is refused/)
    assert.match(r.warn!, /appendfsync always/)
  })

  test('not answering or too old: a failure', async () => {
    const down = await check(provisioned, async () => {
      throw new Error('connect ECONNREFUSED 127.0.0.1:6381')
    })
    assert.equal(down.ok, false)
    assert.match(
      down.detail,
      /^the queue Redis at redis:\/\/127\.0\.0\.1:6381 .* does not answer: connect ECONNREFUSED/,
    )
    assert.match(down.fix!, /provision\.sh.*INITLESS_ASYNC_REDIS_URL/)
    const old = await check(provisioned, async () => ({ ...DURABLE, version: '6.0.16' }))
    assert.equal(old.ok, false)
    assert.match(old.detail, /6\.0\.16 .* is older than 6\.2\.0/)
  })
})
