import assert from 'node:assert/strict'
import { test } from 'node:test'
import { withRatios, summarizeCold, type ColdRun } from './cold-start.ts'
import { coldStartProfile, evaluateTargets, renderMarkdown, type BenchResult } from './report.ts'

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
    machine: { cpu: 'cpu', cores: 2, memoryGiB: 24, kernel: '6.18', loadAvg1m: 0.1 },
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
