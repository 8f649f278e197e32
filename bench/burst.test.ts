import assert from 'node:assert/strict'
import { test } from 'node:test'
import { answerTiming, burstProfile, type BurstResult } from './burst.ts'
import { burstProfileLines } from './report.ts'

test('answerTiming reads wait, upstream and, for a cold answer, the instance phases', () => {
  assert.deepEqual(
    answerTiming(
      300,
      'cold, wait;dur=270.5, queue;dur=3, sandbox;dur=12, restore;dur=190, criu;dur=170, ready;dur=40, upstream;dur=20',
    ),
    { ttfbMs: 300, waitMs: 270.5, upstreamMs: 20, readyAfterMs: 245 },
  )
  assert.deepEqual(answerTiming(5, 'warm, upstream;dur=2.5'), { ttfbMs: 5, waitMs: 0, upstreamMs: 2.5 })
  // A warm answer that queued for a slot has a wait but no phases.
  assert.deepEqual(answerTiming(50, 'warm, wait;dur=40, upstream;dur=8'), {
    ttfbMs: 50,
    waitMs: 40,
    upstreamMs: 8,
  })
  assert.deepEqual(answerTiming(9, undefined), { ttfbMs: 9, waitMs: 0, upstreamMs: NaN })
})

test('burstProfile: percentiles of wait and upstream, the first instance, the slowest 1%', () => {
  const answers = [
    ...Array.from({ length: 150 }, (_, i) =>
      answerTiming(
        260 + i,
        `cold, wait;dur=${250 + i}, queue;dur=2, sandbox;dur=10, restore;dur=${190 + (i % 3)}, ready;dur=38, upstream;dur=8`,
      ),
    ),
    ...Array.from({ length: 49 }, (_, i) =>
      answerTiming(420 + i, `warm, wait;dur=${400 + i}, upstream;dur=15`),
    ),
    answerTiming(600, 'warm, wait;dur=560, upstream;dur=30'),
  ]
  const p = burstProfile(answers)!
  assert.equal(p.coldAnswers, 150)
  assert.equal(p.firstReadyMs, 240)
  assert.deepEqual(p.slowest, { n: 2, ttfbMs: 534, waitMs: 504, upstreamMs: 22.5 })
  assert.equal(p.upstreamP50Ms, 8)
  assert.equal(p.waitP99Ms, 447) // the 198th of 200 waits (250..399, 400..448, 560)
  assert.equal(burstProfile([]), undefined)
})

test('the report says where the burst time went, and nothing for results without a profile', () => {
  const b: BurstResult = {
    function: 'spring-greeting',
    requests: 200,
    errors: 0,
    errorSamples: [],
    restores: 1,
    runtimes: { lazy: 1 },
    p50Ms: 500,
    p99Ms: 640,
    maxMs: 660,
    wallMs: 700,
    profile: {
      waitP50Ms: 450,
      waitP99Ms: 600,
      upstreamP50Ms: 20,
      upstreamP99Ms: 60,
      coldAnswers: 200,
      firstReadyMs: 250,
      slowest: { n: 2, ttfbMs: 650, waitMs: 600, upstreamMs: 40 },
    },
  }
  const [slowest, first, all] = burstProfileLines({ ...b, singleColdP50Ms: 200, singleColdBasis: 'x' })
  assert.equal(
    slowest,
    'The slowest 1% (2 answers): 650 ms to first byte = waited 600 ms in the gateway for a slot + 40 ms upstream + 10 ms outside both (connection, parsing, the way back).',
  )
  assert.match(
    first!,
    /^The first instance was ready 250 ms after its restore was enqueued .*; 200 of 200 answers waited/,
  )
  assert.equal(all, 'All answers: wait p50 450 / p99 600 ms, upstream p50 20 / p99 60 ms.')
  const { profile: _p, ...old } = b
  assert.deepEqual(burstProfileLines({ ...old, singleColdP50Ms: 200, singleColdBasis: 'x' }), [])
})
