import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createCoalescedReads } from './coalesced-reads.ts'

test('reads asked for during a read make exactly one more read; names are apart', async () => {
  const started: string[] = []
  let release: () => void = () => undefined
  const reads = createCoalescedReads(
    async (name) => {
      started.push(name)
      if (name === 'a' && started.length === 1) await new Promise<void>((r) => (release = r))
    },
    () => assert.fail('no error expected'),
  )
  const first = reads.read('a')
  assert.equal(reads.isReading('a'), true)
  const more = [reads.read('a'), reads.read('a'), reads.read('a')]
  await reads.read('b')
  release()
  await Promise.all([first, ...more])
  assert.deepEqual(started, ['a', 'b', 'a'])
  assert.equal(reads.isReading('a'), false)
})

test('a failed read goes to onError and the next read starts afresh', async () => {
  const errors: string[] = []
  let fail = true
  const reads = createCoalescedReads(
    async () => {
      if (fail) throw new Error('down')
    },
    (name, err) => errors.push(`${name}: ${(err as Error).message}`),
  )
  await reads.read('x')
  fail = false
  await reads.read('x')
  assert.deepEqual(errors, ['x: down'])
})
