import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { RuntimeKind } from '../../shared/contracts.ts'
import type { RestorePolicy } from '../../shared/manifest.ts'
import { chooseRuntime } from './runtimes.ts'

const MiB = 1024 * 1024
const THRESHOLD = 64 * MiB

const cases: Array<[RestorePolicy, number | undefined, number, RuntimeKind]> = [
  // auto: lazy from the threshold up, eager below it.
  ['auto', 10 * MiB, THRESHOLD, 'eager'],
  ['auto', THRESHOLD - 1, THRESHOLD, 'eager'],
  ['auto', THRESHOLD, THRESHOLD, 'lazy'],
  ['auto', 3 * 1024 * MiB, THRESHOLD, 'lazy'],
  ['auto', 0, THRESHOLD, 'eager'],
  ['auto', 0, 0, 'lazy'],
  ['auto', 10 * MiB, Number.POSITIVE_INFINITY, 'eager'],
  // An explicit policy wins over the size.
  ['lazy', 1, THRESHOLD, 'lazy'],
  ['lazy', 3 * 1024 * MiB, THRESHOLD, 'lazy'],
  ['eager', 3 * 1024 * MiB, THRESHOLD, 'eager'],
  ['eager', 1, THRESHOLD, 'eager'],
  ['boot', 3 * 1024 * MiB, THRESHOLD, 'boot'],
  ['boot', 1, THRESHOLD, 'boot'],
  // No snapshot: boot, whatever the policy.
  ['auto', undefined, THRESHOLD, 'boot'],
  ['lazy', undefined, THRESHOLD, 'boot'],
  ['eager', undefined, THRESHOLD, 'boot'],
  ['boot', undefined, THRESHOLD, 'boot'],
]

for (const [policy, bytes, threshold, expected] of cases) {
  test(`policy ${policy}, snapshot ${bytes ?? 'none'}, threshold ${threshold} -> ${expected}`, () => {
    assert.equal(chooseRuntime(policy, bytes, threshold), expected)
  })
}
