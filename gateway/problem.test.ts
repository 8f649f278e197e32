import assert from 'node:assert/strict'
import { test } from 'node:test'
import { InitlessError } from '../shared/errors.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { noCapacity } from './pool-state.ts'
import { problemResponse, type Problem } from './problem.ts'

const log = createSilentLogger()

test('an InitlessError renders as problem+json with its code and status', async () => {
  const res = problemResponse(
    new InitlessError('ERR_FUNCTION_NOT_FOUND', 'no function named x'),
    'req-1',
    log,
  )
  assert.equal(res.status, 404)
  assert.equal(res.headers.get('content-type'), 'application/problem+json')
  assert.equal(res.headers.get('x-request-id'), 'req-1')
  assert.deepEqual(await res.json(), {
    type: 'urn:initless:error:ERR_FUNCTION_NOT_FOUND',
    title: 'Function not found',
    status: 404,
    detail: 'no function named x',
    code: 'ERR_FUNCTION_NOT_FOUND',
    requestId: 'req-1',
  })
})

test('unknown errors are 500 ERR_INTERNAL without their message', async () => {
  const res = problemResponse(new Error('ECONNREFUSED 10.1.2.3:6379 secret path /etc/x'), 'r', log)
  assert.equal(res.status, 500)
  const text = await res.text()
  assert.doesNotMatch(text, /10\.1\.2\.3|secret|etc/)
  assert.equal((JSON.parse(text) as Problem).code, 'ERR_INTERNAL')
})

test('no capacity carries Retry-After; unauthorized a Bearer challenge', () => {
  assert.equal(problemResponse(noCapacity('full', 2500), 'r', log).headers.get('retry-after'), '3')
  const timeout = problemResponse(new InitlessError('ERR_GATEWAY_TIMEOUT', 'late'), 'r', log)
  assert.equal(timeout.status, 504)
  assert.equal(timeout.headers.get('retry-after'), null)
  const unauthorized = problemResponse(new InitlessError('ERR_GATEWAY_UNAUTHORIZED', 'no'), 'r', log)
  assert.match(unauthorized.headers.get('www-authenticate') ?? '', /^Bearer /)
})
