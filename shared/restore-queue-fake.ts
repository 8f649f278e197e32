/** In-memory RestoreQueue for unit tests: records jobs; the test decides how each one ends. */
import {
  decodeRestoreFailure,
  type RestoreFailure,
  type RestoreJobData,
  type RestoreJobResult,
} from './contracts.ts'
import type { RestoreOutcome, RestoreQueue } from './restore-queue.ts'

export interface FakeRestoreQueue extends RestoreQueue {
  /** Every job enqueued so far, in order. */
  readonly jobs: readonly RestoreJobData[]
  /** Report a job as completed (the test marks the instance ready in the registry itself). */
  complete(instanceId: string, result?: RestoreJobResult): void
  /** Report a job as failed; a string is a failure without an envelope (BullMQ's own). */
  fail(instanceId: string, failure: RestoreFailure | string): void
  /** While false, enqueue rejects like a queue whose Redis is down. */
  setAvailable(isAvailable: boolean): void
  /** Called for every job enqueued from now on (a test's stand-in executor). */
  onJob(listener: (job: RestoreJobData) => void): () => void
  /** Resolves once at least `count` jobs were enqueued. */
  waitForJobs(count: number, timeoutMs?: number): Promise<readonly RestoreJobData[]>
}

export function createFakeRestoreQueue(): FakeRestoreQueue {
  const jobs: RestoreJobData[] = []
  /** A result for a job the test completes without giving one. */
  const resultOf = (instanceId: string): RestoreJobResult => {
    const job = jobs.find((j) => j.instanceId === instanceId)
    return {
      instanceId,
      fn: job?.fn ?? '',
      address: { host: '127.0.0.1', port: 0 },
      hostId: 'fake',
      runtime: job?.runtime ?? 'lazy',
      pooled: false,
      phases: { queueMs: 0, sandboxMs: 0, restoreMs: 0, readyMs: 0 },
      snapshotBytes: 0,
    }
  }
  const listeners = new Set<(o: RestoreOutcome) => void>()
  const waiting = new Set<() => void>()
  const jobListeners = new Set<(job: RestoreJobData) => void>()
  let isAvailable = true
  const emit = (o: RestoreOutcome) => {
    for (const l of [...listeners]) queueMicrotask(() => l(o))
  }
  return {
    jobs,
    async enqueue(data) {
      await Promise.resolve()
      if (!isAvailable) throw new Error('fake queue unavailable')
      if (jobs.some((j) => j.instanceId === data.instanceId))
        throw new Error(`duplicate job ${data.instanceId}`)
      jobs.push(data)
      for (const w of [...waiting]) w()
      for (const l of [...jobListeners]) queueMicrotask(() => l(data))
    },
    onOutcome(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
    onJob(listener) {
      jobListeners.add(listener)
      return () => jobListeners.delete(listener)
    },
    complete: (instanceId, result) => emit({ instanceId, ok: true, result: result ?? resultOf(instanceId) }),
    fail: (instanceId, failure) =>
      emit({
        instanceId,
        ok: false,
        failure: typeof failure === 'string' ? decodeRestoreFailure(failure) : failure,
      }),
    setAvailable(v) {
      isAvailable = v
    },
    waitForJobs(count, timeoutMs = 2000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (jobs.length < count) return
          clearTimeout(timer)
          waiting.delete(check)
          resolve(jobs)
        }
        const timer = setTimeout(() => {
          waiting.delete(check)
          reject(new Error(`expected ${count} jobs, got ${jobs.length}`))
        }, timeoutMs)
        waiting.add(check)
        check()
      })
    },
  }
}
