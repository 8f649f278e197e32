import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createSilentLogger } from './logger.ts'
import { closeOnSignals, createShutdown, within } from './shutdown.ts'

const logger = createSilentLogger()

test('runs every step once, even when one throws, and is idempotent', async () => {
  const ran: string[] = []
  const shutdown = createShutdown({
    logger,
    deadlineMs: 1000,
    steps: [
      { name: 'a', run: () => void ran.push('a') },
      {
        name: 'b',
        run: () => {
          ran.push('b')
          throw new Error('boom')
        },
      },
      { name: 'c', run: async () => void ran.push('c') },
    ],
  })
  const [first, second] = await Promise.all([shutdown(), shutdown()])
  assert.deepEqual(ran, ['a', 'b', 'c'])
  assert.equal(first, second)
  assert.equal(first.isClean, false)
})

test('a step that hangs is abandoned at the deadline and later steps still run', async () => {
  const ran: string[] = []
  const started = Date.now()
  const result = await createShutdown({
    logger,
    deadlineMs: 100,
    steps: [
      { name: 'hang', run: () => new Promise(() => undefined) },
      { name: 'after', run: () => void ran.push('after') },
    ],
  })()
  assert.equal(result.isClean, false)
  assert.deepEqual(ran, ['after'])
  assert.ok(Date.now() - started < 1000)
})

test('a step with its own limit waits that long whatever the deadline, and onTimeout forces it', async () => {
  const ran: string[] = []
  const result = await createShutdown({
    logger,
    deadlineMs: 10,
    steps: [
      {
        name: 'slow but bounded',
        timeoutMs: 150,
        run: () => new Promise((r) => setTimeout(r, 60)).then(() => void ran.push('slow')),
      },
      {
        name: 'must finish',
        timeoutMs: Infinity,
        run: () => new Promise((r) => setTimeout(r, 60)).then(() => void ran.push('must')),
      },
      {
        name: 'hangs',
        timeoutMs: 20,
        run: () => new Promise(() => undefined),
        onTimeout: () => void ran.push('forced'),
      },
      { name: 'past the deadline', run: () => new Promise(() => undefined) },
    ],
  })()
  assert.deepEqual(ran, ['slow', 'must', 'forced'])
  assert.equal(result.isClean, false)
})

test('within rejects late promises and passes on timely ones', async () => {
  assert.equal(await within(Promise.resolve(7), 50), 7)
  await assert.rejects(within(new Promise(() => undefined), 20), /no answer within 20 ms/)
})

/** Runs `install`, returns the SIGINT and SIGTERM handlers it added, and removes them after `use`. */
async function withSignalHandlers(
  install: () => void,
  use: (h: { term: NodeJS.SignalsListener; int: NodeJS.SignalsListener }) => Promise<void>,
): Promise<void> {
  const before = { term: process.listeners('SIGTERM').length, int: process.listeners('SIGINT').length }
  install()
  const [term] = process.listeners('SIGTERM').slice(before.term)
  const [int] = process.listeners('SIGINT').slice(before.int)
  try {
    assert.ok(term && int, 'a handler for each signal, installed at once')
    await use({ term, int })
  } finally {
    if (term) process.off('SIGTERM', term)
    if (int) process.off('SIGINT', int)
  }
}

const tick = () => new Promise((r) => setTimeout(r, 10))

test('closeOnSignals: a signal during start waits for it, then closes; a failed start exits 1', async () => {
  const exits: number[] = []
  const closed: string[] = []
  let started!: (r: { close(): Promise<{ isClean: boolean }> }) => void
  const starting = new Promise<{ close(): Promise<{ isClean: boolean }> }>((r) => (started = r))
  await withSignalHandlers(
    () =>
      closeOnSignals(
        logger,
        starting,
        ({ isClean }) => (isClean ? 0 : 1),
        (code) => exits.push(code),
      ),
    async ({ term }) => {
      term('SIGTERM')
      await tick()
      assert.deepEqual(exits, [], 'no exit while still starting')
      started({
        close: async () => {
          closed.push('close')
          return { isClean: false }
        },
      })
      await tick()
      assert.deepEqual(closed, ['close'])
      assert.deepEqual(exits, [1], 'the exit code comes from the shutdown result')
    },
  )

  const failedExits: number[] = []
  const failing = Promise.reject(new Error('cannot start'))
  failing.catch(() => undefined)
  await withSignalHandlers(
    () =>
      closeOnSignals(
        logger,
        failing,
        () => 0,
        (code) => failedExits.push(code),
      ),
    async ({ int }) => {
      int('SIGINT')
      await tick()
      assert.deepEqual(failedExits, [1])
    },
  )
})
