import assert from 'node:assert/strict'
import { test } from 'node:test'
import { serverTiming } from './server-timing.ts'

test('warm: upstream only (and the wait, when there was one)', () => {
  assert.equal(serverTiming({ isCold: false, waitedMs: 0.4, upstreamMs: 1.26 }), 'warm, upstream;dur=1.3')
  assert.equal(
    serverTiming({ isCold: false, waitedMs: 12, upstreamMs: 2 }),
    'warm, wait;dur=12, upstream;dur=2',
  )
})

test('cold: every phase, CRIU time right after the restore it is part of', () => {
  const phases = { queueMs: 3, sandboxMs: 0, restoreMs: 180.04, criuMs: 96.66, readyMs: 4 }
  assert.equal(
    serverTiming({ isCold: true, waitedMs: 200, phases, upstreamMs: 5 }),
    'cold, wait;dur=200, queue;dur=3, sandbox;dur=0, restore;dur=180, criu;dur=96.7, ready;dur=4, upstream;dur=5',
  )
  const { criuMs: _criu, ...boot } = phases
  assert.equal(
    serverTiming({ isCold: true, waitedMs: 200, phases: boot, upstreamMs: 5 }),
    'cold, wait;dur=200, queue;dur=3, sandbox;dur=0, restore;dur=180, ready;dur=4, upstream;dur=5',
  )
})

test('thawed: the wait (claim and thaw) and the upstream, never restore phases', () => {
  assert.equal(
    serverTiming({ isCold: false, isThawed: true, waitedMs: 0.6, upstreamMs: 2.04 }),
    'thawed, wait;dur=0.6, upstream;dur=2',
  )
})

test('cold from a booted instance says boot (no snapshot restored it)', () => {
  const phases = { queueMs: 3, sandboxMs: 0, restoreMs: 400, readyMs: 90 }
  assert.equal(
    serverTiming({ isCold: true, isBooted: true, waitedMs: 500, phases, upstreamMs: 5 }),
    'cold, boot, wait;dur=500, queue;dur=3, sandbox;dur=0, restore;dur=400, ready;dur=90, upstream;dur=5',
  )
  assert.equal(
    serverTiming({ isCold: false, isBooted: true, waitedMs: 0, upstreamMs: 2 }),
    'warm, upstream;dur=2',
  )
})
