import assert from 'node:assert/strict'
import { test } from 'node:test'
import { withRatios, summarizeCold, type ColdRun } from './cold-start.ts'
import {
  burstCpuLines,
  burstProfileLines,
  coldStartProfile,
  evaluateConcurrency,
  evaluateTargets,
  renderMarkdown,
  targetsTable,
  warmProfile,
  type BenchResult,
} from './report.ts'
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
    bursts: [],
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
  const burst = (requests: number, p99Ms: number, errors = 0) => ({
    function: 'spring-greeting',
    requests,
    errors,
    errorSamples: errors ? ['socket hang up'] : [],
    restores: 4,
    runtimes: { lazy: 4 },
    p50Ms: 200,
    p99Ms,
    maxMs: p99Ms + 10,
    wallMs: p99Ms + 20,
    singleColdP50Ms: 100,
    singleColdBasis: 'x',
  })
  const targets = evaluateTargets(
    result({
      coldStart: withRatios([
        summarizeCold('flask-table', 'boot', [run(6000)], []),
        summarizeCold('flask-table', 'lazy', [run(40), run(45), run(90)], []),
        summarizeCold('flask-table', 'lazy+pool', [run(30), run(40), run(50)], []),
        summarizeCold('hello-node', 'eager', [run(90)], ['boom']),
        summarizeCold('spring-greeting', 'eager', [run(60)], []),
      ]),
      policyRuntimes: { 'flask-table': 'lazy', 'hello-node': 'eager', 'spring-greeting': 'lazy' },
      bursts: [burst(200, 250), burst(1000, 400, 2)],
      warm: [warm('direct', 1, 0.1, 9000), warm('gateway', 1, 0.6, 4000), warm('nginx', 1, 0.2, 6000)],
    }),
  )
  const by = (name: string) => {
    const t = targets.find((x) => x.target === name)
    assert.ok(t, `no target '${name}' in ${targets.map((x) => x.target).join(', ')}`)
    return t
  }
  const verdict = (name: string) => [by(name).value, by(name).met, by(name).margin]
  // Every sample of the matrix is judged on its policy's runtime, the pooled row on its own.
  assert.deepEqual(verdict('flask-table cold start'), [45, true, 'met by 5 ms (10%)'])
  assert.deepEqual(verdict('flask-table cold start: tail'), [2, false, 'missed by 0.5x (33%)'])
  assert.deepEqual(verdict('flask-table cold start, with the pool'), [40, true, 'met by 10 ms (20%)'])
  assert.deepEqual(verdict('flask-table cold start, with the pool: tail'), [1.25, true, 'met by 0.25x (17%)'])
  assert.deepEqual(verdict('hello-node cold start'), [90, false, 'missed by 40 ms (80%)'])
  assert.equal(by('hello-node cold start: tail').met, true)
  assert.ok(!targets.some((t) => t.target.startsWith('hello-node cold start, with the pool')))
  // A sample measured only on a runtime its policy does not pick is not measured, not judged on it.
  assert.deepEqual(verdict('spring-greeting cold start'), [null, null, 'not measured'])
  assert.match(by('spring-greeting cold start').basis, /no lazy row for spring-greeting/)
  // Each burst size is judged on its own.
  assert.deepEqual(verdict('burst of 200 from zero: errors'), [0, true, 'met by 0 errors'])
  assert.deepEqual(verdict('burst of 200 from zero: p99 vs a single cold start'), [
    2.5,
    true,
    'met by 0.5x (17%)',
  ])
  assert.equal(by('burst of 1000 from zero: errors').met, false)
  assert.deepEqual(verdict('burst of 1000 from zero: p99 vs a single cold start'), [
    4,
    false,
    'missed by 1x (33%)',
  ])
  assert.ok(!targets.some((t) => t.target.includes('faster than boot')))
  const added = by('warm path: p50 added by the gateway, 1 connection')
  assert.deepEqual([added.value, added.met], [0.5, true])
  const tput = by('warm path: gateway throughput vs nginx, 1 connection (%)')
  assert.deepEqual([tput.value, tput.met], [66.67, true])
  const md = renderMarkdown({ ...result(), targets })
  assert.doesNotMatch(md, /Where the time of the burst/)
  // The machine line says how the kernel ran RCU grace periods (restores differ by ~15 ms).
  assert.match(md, /kernel 6\.18 \(RCU grace periods expedited\), load 0\.1 at start/)
  const profiled = renderMarkdown({
    ...result({
      bursts: [
        {
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
      ],
    }),
    targets,
  })
  assert.match(
    profiled,
    /Where the time of the burst of 2 goes[^]*- The slowest 1% \(1 answer\): 2 ms to first byte/,
  )
  assert.match(md, /\| hello-node cold start \| 90 ms \| <= 50 ms \| \*\*MISSED\*\*, missed by 40 ms/)
  assert.match(md, /\| flask-table cold start, with the pool: tail \| 1\.25x \| <= 1\.5x \| \*\*met\*\*/)
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

test('evaluateConcurrency judges 3 concurrent restores and mixed ones on the p50 and the slowest', () => {
  const targets = evaluateConcurrency({
    concurrentLazy: { n: 15, p50Ms: 90, maxMs: 130 },
    aloneP50Ms: 64,
    mixed: {
      simultaneous: 10,
      errors: ['hello-node: restore timed out'],
      byFunction: [{ function: 'hello-node', aloneP50Ms: 41, p50Ratio: 3.5, maxRatio: 6.9 }],
    },
  })
  const by = (name: string) => targets.find((t) => t.target === name)
  assert.deepEqual(
    [by('3 concurrent flask-table restores: p50')?.value, by('3 concurrent flask-table restores: p50')?.met],
    [1.41, true],
  )
  assert.deepEqual(
    [
      by('3 concurrent flask-table restores: slowest')?.value,
      by('3 concurrent flask-table restores: slowest')?.met,
    ],
    [2.03, false],
  )
  assert.deepEqual(
    [by('10 simultaneous mixed restores: errors')?.value, by('10 simultaneous mixed restores: errors')?.met],
    [1, false],
  )
  assert.equal(by('mixed: hello-node p50')?.met, true)
  assert.equal(by('mixed: hello-node slowest')?.margin, 'missed by 2.9x (73%)')
  assert.match(
    targetsTable(targets).join('\n'),
    /\| mixed: hello-node slowest \| 6\.9x \| <= 4x \| \*\*MISSED\*\*/,
  )
  // Nothing run: not measured, never met.
  const none = evaluateConcurrency({})
  assert.ok(none.length > 0 && none.every((t) => t.met === null))
})

test('burstCpuLines: the CPU the burst took, and the floor it puts under its wall time', () => {
  const b = {
    function: 'spring-greeting',
    requests: 1000,
    errors: 0,
    errorSamples: [],
    restores: 5,
    runtimes: { lazy: 5 },
    p50Ms: 600,
    p99Ms: 1100,
    maxMs: 1200,
    wallMs: 1250,
    singleColdP50Ms: 90,
    singleColdBasis: 'x',
    cpu: { cpus: 2, wallS: 1.25, busyS: 2.4, gatewayS: 0.9, loadGeneratorS: 0.6 },
  }
  assert.deepEqual(burstCpuLines(b), [
    "The machine's 2 CPUs were busy 96% of the burst's 1250 ms: 2.4 CPU-seconds (gateway 0.9, load generator 0.6, the rest 0.9: executor, CRIU, the instances, the kernel). That work alone, spread over all 2 CPUs, takes 1200 ms = 13.3x the single cold start; without the load generator's, which a real burst's clients do elsewhere, 900 ms = 10x the single cold start.",
  ])
  const { cpu, ...older } = b
  assert.ok(cpu)
  assert.deepEqual(burstCpuLines(older), [])
})

test('a burst size asked for but not measured is judged not measured; its CPU shows without a profile', () => {
  const b = {
    function: 'spring-greeting',
    requests: 200,
    errors: 200,
    errorSamples: ['ECONNRESET'],
    restores: 0,
    runtimes: {},
    p50Ms: NaN,
    p99Ms: NaN,
    maxMs: NaN,
    wallMs: 900,
    singleColdP50Ms: 90,
    singleColdBasis: 'x',
    cpu: { cpus: 2, wallS: 0.9, busyS: 0.5, gatewayS: 0.2, loadGeneratorS: 0.1 },
  }
  const targets = evaluateTargets(
    result({ settings: { burstRequests: [200, 1000] }, coldStart: [], policyRuntimes: {}, bursts: [b] }),
  )
  const missing = targets.find((t) => t.target === 'burst of 1000 from zero: p99 vs a single cold start')
  assert.deepEqual([missing?.met, missing?.basis], [null, 'burst failed or not run'])
  assert.equal(targets.find((t) => t.target === 'burst of 200 from zero: errors')?.met, false)
  assert.match(burstProfileLines(b).join('\n'), /busy 28% of the burst's 900 ms/)
})
