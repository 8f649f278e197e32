import assert from 'node:assert/strict'
import { Writable } from 'node:stream'
import { test } from 'node:test'
import { pino, type Logger } from 'pino'
import { createRequestLog } from './request-log.ts'

/** A pino logger writing JSON lines into `lines`, counting the children made of it. */
function capture(level: string): { root: Logger; lines: Record<string, unknown>[]; children: () => number } {
  const lines: Record<string, unknown>[] = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, callback) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>)
      callback()
    },
  })
  const logger = pino({ level, base: null, timestamp: false }, sink)
  let children = 0
  const child = logger.child.bind(logger)
  logger.child = ((...args: Parameters<Logger['child']>) => {
    children++
    return child(...args)
  }) as Logger['child']
  return { root: logger, lines, children: () => children }
}

test('nothing is built while nothing is logged at an enabled level', () => {
  const { root, lines, children } = capture('info')
  const log = createRequestLog(root, { requestId: 'r1' }).child({ fn: 'hello' })
  log.debug({ status: 200 }, 'request proxied')
  assert.equal(children(), 0)
  assert.deepEqual(lines, [])
})

test('an enabled line carries every binding, as a pino child would write it', () => {
  const { root, lines, children } = capture('info')
  const log = createRequestLog(root, { requestId: 'r1' })
  const fnLog = log.child({ fn: 'hello' })
  fnLog.info({ instanceId: 'i1' }, 'retrying request')
  fnLog.warn({ code: 'ERR_X' }, 'request failed')
  log.error({ err: 'boom' }, 'unhandled error')
  assert.equal(children(), 2, 'one pino child per request logger that wrote')
  assert.deepEqual(lines, [
    { level: 30, requestId: 'r1', fn: 'hello', instanceId: 'i1', msg: 'retrying request' },
    { level: 40, requestId: 'r1', fn: 'hello', code: 'ERR_X', msg: 'request failed' },
    { level: 50, requestId: 'r1', err: 'boom', msg: 'unhandled error' },
  ])
})
