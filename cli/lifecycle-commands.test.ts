import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { InstanceRecord } from '../shared/contracts.ts'
import { standbyOf } from './lifecycle-commands.ts'

test('standbyOf counts restored frozen instances and their memory, per function', () => {
  const base = { hostId: 'h', createdAt: 1 }
  const address = { host: '10.213.0.2', port: 8080 }
  const records: InstanceRecord[] = [
    { ...base, id: 'a1', fn: 'a', state: 'frozen', address, memoryBytes: 10 },
    { ...base, id: 'a2', fn: 'a', state: 'frozen', address, memoryBytes: 5 },
    { ...base, id: 'a3', fn: 'a', state: 'frozen' },
    { ...base, id: 'a4', fn: 'a', state: 'ready', address },
    { ...base, id: 'b1', fn: 'b', state: 'frozen', address },
  ]
  assert.deepEqual(
    [...standbyOf(records)],
    [
      ['a', { count: 2, bytes: 15 }],
      ['b', { count: 1, bytes: 0 }],
    ],
  )
})
