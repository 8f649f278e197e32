import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createFnState, createLease } from './pool-state.ts'
import { testManifest } from './test-support.ts'

function stateWithReady() {
  const s = createFnState(testManifest('hello'))
  s.ready.set('i1', { id: 'i1', address: { host: '10.0.0.2', port: 8080 }, readyAt: 100 })
  return s
}

test('a lease taken without waiting reports no wait, even when the millisecond clock ticked', () => {
  const lease = createLease(
    stateWithReady(),
    'i1',
    { startedAt: 1000, hasWaited: false, now: 1001 },
    () => undefined,
  )
  assert.equal(lease.waitedMs, 0)
  assert.equal(lease.isCold, false)
})

test('a lease taken after waiting reports how long', () => {
  const lease = createLease(
    stateWithReady(),
    'i1',
    { startedAt: 50, hasWaited: true, now: 175 },
    () => undefined,
  )
  assert.equal(lease.waitedMs, 125)
  assert.equal(lease.isCold, true, 'the instance became ready while the request waited')
})
