/** An in-memory InvocationStore for unit tests: accepts, deduplicates and bounds like the real one. */
import { InitlessError } from '../../shared/errors.ts'
import type { InvocationStore } from './bullmq-invocations.ts'
import type { InvocationData, InvocationView } from './invocation.ts'

export interface FakeInvocationStore extends InvocationStore {
  readonly stored: Map<string, InvocationData>
  /** Make every call fail as an unreachable Redis does. */
  isDown: boolean
}

export function createFakeInvocationStore(): FakeInvocationStore {
  const stored = new Map<string, InvocationData>()
  const view = (d: InvocationData): InvocationView => ({
    id: d.id,
    fn: d.fn,
    state: 'queued',
    method: d.request.method,
    path: d.request.path,
    acceptedAt: d.acceptedAt,
    attempts: [],
  })
  const up = () => {
    if (store.isDown) throw new InitlessError('ERR_ASYNC_UNAVAILABLE', 'the invocation queue did not answer')
  }
  const store: FakeInvocationStore = {
    stored,
    isDown: false,
    async accept(data, manifest) {
      up()
      const existing = stored.get(data.id)
      if (existing) {
        if (existing.requestHash !== data.requestHash)
          throw new InitlessError('ERR_ASYNC_IDEMPOTENCY_CONFLICT', 'Idempotency-Key already used')
        return { isDuplicate: true }
      }
      const waiting = [...stored.values()].filter((d) => d.fn === data.fn).length
      if (waiting >= manifest.async.queueLimit)
        throw new InitlessError('ERR_ASYNC_QUEUE_FULL', 'queue full', { details: { retryAfterS: 1 } })
      stored.set(data.id, data)
      return { isDuplicate: false }
    },
    async get(id) {
      up()
      const d = stored.get(id)
      return d && view(d)
    },
    async list({ fn, limit }) {
      up()
      return [...stored.values()]
        .filter((d) => d.fn === fn)
        .slice(0, limit)
        .map(view)
    },
    async redrive() {
      up()
      return []
    },
    async purge() {
      up()
      return 0
    },
    async stats(fn) {
      up()
      return { fn, queued: [...stored.values()].filter((d) => d.fn === fn).length, running: 0, dead: 0 }
    },
  }
  return store
}
