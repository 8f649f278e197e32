import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import {
  functionOfId,
  newInvocationId,
  nextStep,
  readLog,
  requestHash,
  type AttemptOutcome,
  type LogEntry,
} from './invocation.ts'

const response = (status: number): AttemptOutcome => ({
  kind: 'response',
  result: { status, headers: {}, body: '', bodyBytes: 0, isTruncated: false },
})
const error = (code: string, retryable: boolean): AttemptOutcome => ({
  kind: 'error',
  code,
  message: code,
  retryable,
})

describe('nextStep', () => {
  const cases: [string, AttemptOutcome, boolean, string][] = [
    ['200', response(200), false, 'succeeded'],
    ['302', response(302), false, 'succeeded'],
    ['404 is final', response(404), false, 'failed'],
    ['400 is final', response(400), false, 'failed'],
    ['408 is retried', response(408), false, 'retry'],
    ['429 is retried', response(429), false, 'retry'],
    ['500 is retried', response(500), false, 'retry'],
    ['503 on the last attempt is dead', response(503), true, 'dead'],
    ['404 on the last attempt is failed', response(404), true, 'failed'],
    ['200 on the last attempt', response(200), true, 'succeeded'],
    ['connection refused is retried', error('ERR_GATEWAY_UPSTREAM_FAILED', true), false, 'retry'],
    ['a timeout is retried', error('ERR_GATEWAY_TIMEOUT', true), false, 'retry'],
    ['no capacity is retried', error('ERR_GATEWAY_NO_CAPACITY', true), false, 'retry'],
    ['a retryable error on the last attempt is dead', error('ERR_GATEWAY_TIMEOUT', true), true, 'dead'],
    ['a deleted function is dead at once', error('ERR_FUNCTION_NOT_FOUND', false), false, 'dead'],
  ]
  for (const [what, outcome, isLast, expected] of cases)
    test(what, () => assert.equal(nextStep(outcome, isLast), expected))
})

test('invocation ids name their function; idempotency keys give the same id per function', () => {
  const id = newInvocationId('hello-node')
  assert.equal(functionOfId(id), 'hello-node')
  assert.notEqual(newInvocationId('hello-node'), id)
  const k = newInvocationId('hello-node', 'order-42')
  assert.equal(newInvocationId('hello-node', 'order-42'), k)
  assert.notEqual(newInvocationId('other', 'order-42').split('.')[1], k.split('.')[1])
  assert.equal(functionOfId(k), 'hello-node')
  assert.ok(!k.includes(':'), 'BullMQ job ids may not contain :')
  for (const bad of ['', 'x', 'Hello.abcdefgh', 'a.b.c', 'a:b.abcdefgh', '../x.abcdefgh'])
    assert.equal(functionOfId(bad), undefined, bad)
})

test('requestHash tells requests apart, not header order', () => {
  const r = { method: 'POST', path: '/a', headers: { a: '1', b: '2' }, body: 'eA==' }
  assert.equal(requestHash('f', r), requestHash('f', { ...r, headers: { b: '2', a: '1' } }))
  assert.notEqual(requestHash('f', r), requestHash('f', { ...r, body: 'eQ==' }))
  assert.notEqual(requestHash('f', r), requestHash('g', r))
})

test('readLog pairs starts with ends; an attempt cut off by a crash stays open', () => {
  const rows = (
    [
      { e: 'start', at: 10, attempt: 1 },
      { e: 'end', at: 20, next: 'retry', status: 503 },
      { e: 'start', at: 100, attempt: 2 },
      { e: 'start', at: 5000, attempt: 2 },
      { e: 'end', at: 5010, next: 'succeeded', status: 200 },
      { e: 'callback', at: 5100, isDelivered: false, error: 'down' },
      { e: 'callback', at: 6000, isDelivered: true },
    ] satisfies LogEntry[]
  ).map((e) => JSON.stringify(e))
  const { attempts, callback } = readLog([...rows, 'not json'])
  assert.deepEqual(attempts, [
    { attempt: 1, startedAt: 10, endedAt: 20, next: 'retry', status: 503 },
    { attempt: 2, startedAt: 100 },
    { attempt: 3, startedAt: 5000, endedAt: 5010, next: 'succeeded', status: 200 },
  ])
  assert.deepEqual(callback, { deliveredAt: 6000, error: 'down' })
})
