import assert from 'node:assert/strict'
import { test } from 'node:test'
import { endingOf } from './death-reason.ts'

const none = { oomKills: 0, pidsMax: 0, diskFull: false }

test('a live instance within its limits has no ending', () => {
  assert.equal(endingOf(true, none), undefined)
  assert.equal(endingOf(true, undefined), undefined)
})

test('each limit names its reason, dead or alive', () => {
  for (const alive of [true, false]) {
    assert.equal(endingOf(alive, { ...none, oomKills: 1 })?.reason, 'oom-killed')
    assert.equal(endingOf(alive, { ...none, pidsMax: 3 })?.reason, 'pids-limit')
    assert.equal(endingOf(alive, { ...none, diskFull: true })?.reason, 'disk-full')
  }
  assert.match(endingOf(false, { ...none, pidsMax: 3 })!.detail, /3 forks refused/)
})

test('a fork bomb that also met the OOM killer is reported as the fork bomb', () => {
  assert.equal(endingOf(false, { oomKills: 2, pidsMax: 40, diskFull: false })?.reason, 'pids-limit')
  assert.equal(endingOf(false, { oomKills: 2, pidsMax: 0, diskFull: true })?.reason, 'oom-killed')
})

test('a process gone without a limit hit (or without counters: a Docker container) exited', () => {
  assert.equal(endingOf(false, none)?.reason, 'exited')
  assert.equal(endingOf(false, undefined)?.reason, 'exited')
})
