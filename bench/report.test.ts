import assert from 'node:assert/strict'
import { test } from 'node:test'
import { withRatios, summarizeCold, type ColdRun } from './cold-start.ts'
import { coldStartProfile, evaluateTargets, renderMarkdown, warmProfile, type BenchResult } from './report.ts'
import { warmCpu } from './warm.ts'

const run = (ttfbMs: number): ColdRun => ({
  ttfbMs,
  phases: {
    wait: ttfbMs - 2,
    queue: 1,
    sandbox: 0,
    restore: ttfbMs - 10,
    criu: ttfbMs - 30,
    ready: 5,
    upstream: 1,
  },
})

function result(over: Partial<Omit<BenchResult, 'targets'>> = {}): Omit<BenchResult, 'targets'> {
  return {
    date: '2026-01-01T00:00:00.000Z',
    command: 'node --import tsx bench/run.ts',
    machine: { cpu: 'cpu', cores: 2, memoryGiB: 24, kernel: '6.18', loadAvg1m: 0.1, rcuExpedited: true },
    versions: { criu: '4.2.1', runc: '1.1.5', docker: '20.10', node: 'v20' },
    kind: 'test',
    settings: { warmDurationS: 5, warmupS: 2, warmRounds: 3 },
    policyRuntimes: { 'flask-table': 'lazy', 'hello-node': 'eager' },
    coldStart: withRatios([
      summarizeCold('flask-table', 'boot', [run(6000), run(7000), run(8000)], []),
      summarizeCold('flask-table', 'lazy', [run(140), run(150), run(300)], []),
      summarizeCold('hello-node', 'eager', [run(90)], ['boom']),
    ]),
    burst: null,
    warm: [],
    warmSetup: null,
    method: ['m'],
    ...over,
  }
}

test('cold rows: percentiles, phases and ratio to boot', () => {
  const r = result()
  const lazy = r.coldStart.find((c) => c.function === 'flask-table' && c.runtime === 'lazy')!
  assert.equal(lazy.p50Ms, 150)
  assert.equal(lazy.p95Ms, 300)
  assert.equal(lazy.ratioToBoot, 46.67)
  assert.equal(lazy.phasesP50Ms.restore, 140)
  assert.equal(r.coldStart.find((c) => c.runtime === 'boot')!.ratioToBoot, 1)
  assert.equal(r.coldStart.find((c) => c.function === 'hello-node')!.ratioToBoot, null)
})

test('targets say met or missed, by how much, or not measured', () => {
  const warm = (target: 'direct' | 'gateway' | 'nginx', connections: number, p50Ms: number, rps: number) => ({
    function: 'hello-node',
    target,
    connections,
    p50Ms,
    p99Ms: p50Ms * 2,
    rps,
    rpsRounds: [rps],
    requests: rps * 10,
    errors: 0,
    durationS: 10,
    busyRatio: 1,
  })
  const targets = evaluateTargets(
    result({
      burst: {
        function: 'spring-greeting',
        requests: 200,
        errors: 0,
        errorSamples: [],
        restores: 4,
        runtimes: { eager: 4 },
        p50Ms: 200,
        p99Ms: 400,
        maxMs: 410,
        wallMs: 420,
        singleColdP50Ms: 100,
        singleColdBasis: 'x',
      },
      warm: [warm('direct', 1, 0.1, 9000), warm('gateway', 1, 0.6, 4000), warm('nginx', 1, 0.2, 6000)],
    }),
  )
  const by = (name: string) => targets.find((t) => t.target === name)!
  assert.deepEqual(
    [by('flask-table cold start').met, by('flask-table cold start').margin],
    [true, 'met by 0 ms (0%)'],
  )
  assert.equal(by('flask-table faster than boot').met, true)
  assert.deepEqual(
    [by('hello-node cold start').met, by('hello-node cold start').margin],
    [false, 'missed by 10 ms (13%)'],
  )
  assert.deepEqual(
    [by('spring-greeting cold start').met, by('spring-greeting cold start').margin],
    [null, 'not measured'],
  )
  assert.equal(by('burst from zero: errors').met, true)
  const p99 = by('burst from zero: p99 vs a single cold start')
  assert.deepEqual([p99.value, p99.met, p99.margin], [4, false, 'missed by 1x (33%)'])
  const added = by('warm path: p50 added by the gateway, 1 connection')
  assert.deepEqual([added.value, added.met], [0.5, true])
  const tput = by('warm path: gateway throughput vs nginx, 1 connection (%)')
  assert.deepEqual([tput.value, tput.met], [66.67, true])
  const md = renderMarkdown({ ...result(), targets })
  assert.doesNotMatch(md, /Where the burst's time goes/)
  // The machine line says how the kernel ran RCU grace periods (restores differ by ~15 ms).
  assert.match(md, /kernel 6\.18 \(RCU grace periods expedited\), load 0\.1 at start/)
  const profiled = renderMarkdown({
    ...result({
      burst: {
        function: 'f',
        requests: 2,
        errors: 0,
        errorSamples: [],
        restores: 1,
        runtimes: {},
        p50Ms: 1,
        p99Ms: 2,
        maxMs: 2,
        wallMs: 3,
        singleColdP50Ms: 1,
        singleColdBasis: 'x',
        profile: {
          waitP50Ms: 1,
          waitP99Ms: 1,
          upstreamP50Ms: 1,
          upstreamP99Ms: 1,
          coldAnswers: 2,
          firstReadyMs: 1,
          slowest: { n: 1, ttfbMs: 2, waitMs: 1, upstreamMs: 1 },
        },
      },
    }),
    targets,
  })
  assert.match(profiled, /Where the burst's time goes[^]*- The slowest 1% \(1 answer\): 2 ms to first byte/)
  assert.match(md, /\| hello-node cold start \| 90 ms \| <= 80 ms \| \*\*MISSED\*\*, missed by 10 ms/)
  assert.match(md, /\| flask-table \| lazy \(policy\) \| 3 \| 150 \| 300 \| 46\.67x \|/)
})

test('coldStartProfile splits the restore into CRIU and the executor around it for the policy runtime (and the pool)', () => {
  const r = result({
    coldStart: withRatios([
      summarizeCold('flask-table', 'boot', [run(6000)], []),
      summarizeCold('flask-table', 'lazy', [run(150)], []),
      summarizeCold('flask-table', 'lazy+pool', [run(100)], []),
    ]),
  })
  const lines = coldStartProfile(r)
  assert.equal(lines.length, 2)
  // run(150): wait 148 = queue 1 + sandbox 0 + restore 140 (criu 120) + ready 5, 2 ms between them.
  assert.equal(
    lines[0],
    'flask-table lazy: p50 150 ms. In the gateway 148 ms = queue 1 + sandbox 0 + restore 140 (CRIU 120, the executor around it 20) + ready 5 + 2 between them (registry, job hand-over); then upstream 1 ms (the first request, served while pages still arrive).',
  )
  assert.match(lines[1]!, /^flask-table lazy\+pool: p50 100 ms/)
  assert.match(renderMarkdown({ ...r, targets: [] }), /## Where the cold-start time goes/)
})

test('warmCpu weighs the rounds by their time and gives the proxy CPU per request', () => {
  const cpu = warmCpu(
    [
      { seconds: 5, proxyS: 5, loadGeneratorS: 1, instanceS: 1.5, periods: 50, throttled: 0 },
      { seconds: 5, proxyS: 4, loadGeneratorS: 2, instanceS: 2.5, periods: 50, throttled: 10 },
    ],
    45_000,
  )
  assert.deepEqual(cpu, {
    proxyCpus: 0.9,
    proxyUsPerRequest: 200,
    loadGeneratorCpus: 0.3,
    instanceCpus: 0.4,
    instanceThrottledShare: 0.1,
  })
  // Direct runs have no proxy; a run without cgroup figures leaves the instance out.
  assert.deepEqual(warmCpu([{ seconds: 2, loadGeneratorS: 1 }], 100), { loadGeneratorCpus: 0.5 })
  assert.deepEqual(
    warmCpu(
      [
        { seconds: 1, loadGeneratorS: 1, instanceS: 1, periods: 10, throttled: 1 },
        { seconds: 1, loadGeneratorS: 1 },
      ],
      100,
    ),
    { loadGeneratorCpus: 1 },
  )
})

test('warmProfile says per connection count what each path used and compares the proxies', () => {
  const row = (
    target: 'direct' | 'gateway' | 'nginx',
    cpu: NonNullable<BenchResult['warm'][number]['cpu']>,
  ) => ({
    function: 'hello-node',
    target,
    connections: 64,
    p50Ms: 1,
    p99Ms: 2,
    rps: 1000,
    rpsRounds: [1000],
    requests: 1000,
    errors: 0,
    durationS: 1,
    busyRatio: 1,
    cpu,
  })
  const r = result({
    warm: [
      row('gateway', {
        proxyCpus: 0.97,
        proxyUsPerRequest: 221,
        loadGeneratorCpus: 0.23,
        instanceCpus: 0.3,
        instanceThrottledShare: 0.05,
      }),
      row('nginx', {
        proxyCpus: 0.42,
        proxyUsPerRequest: 34,
        loadGeneratorCpus: 0.37,
        instanceCpus: 0.5,
        instanceThrottledShare: 0.96,
      }),
      row('direct', { loadGeneratorCpus: 0.45, instanceCpus: 0.5, instanceThrottledShare: 1 }),
    ],
  })
  assert.deepEqual(warmProfile(r), [
    '64 connections: gateway runs: gateway 0.97 CPUs, 221 us of CPU per request; instance 0.3 CPUs, throttled in 5% of its periods; autocannon 0.23 CPUs. ' +
      'nginx runs: nginx 0.42 CPUs, 34 us of CPU per request; instance 0.5 CPUs, throttled in 96% of its periods; autocannon 0.37 CPUs. ' +
      "direct runs: instance 0.5 CPUs, throttled in 100% of its periods; autocannon 0.45 CPUs. The gateway spends 6.5x nginx's CPU per request.",
  ])
  // Rows of results written before the CPU figures existed: no profile.
  assert.deepEqual(warmProfile({ warm: r.warm.map(({ cpu: _cpu, ...w }) => w) }), [])
})
