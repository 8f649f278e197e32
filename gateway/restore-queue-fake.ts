/** In-memory RestoreQueue for unit tests: records jobs; the test decides how each one ends. */
import type { RestoreJobData } from '../shared/contracts.ts'
import type { RestoreOutcome, RestoreQueue } from './restore-queue.ts'

export interface FakeRestoreQueue extends RestoreQueue {
  /** Every job enqueued so far, in order. */
  readonly jobs: readonly RestoreJobData[]
  /** Report a job as completed (the test marks the instance ready in the registry itself). */
  complete(instanceId: string): void
  fail(instanceId: string, reason: string): void
  /** While false, enqueue rejects like a queue whose Redis is down. */
  setAvailable(isAvailable: boolean): void
  /** Called for every job enqueued from now on (a test's stand-in executor). */
  onJob(listener: (job: RestoreJobData) => void): () => void
  /** Resolves once at least `count` jobs were enqueued. */
  waitForJobs(count: number, timeoutMs?: number): Promise<readonly RestoreJobData[]>
}

export function createFakeRestoreQueue(): FakeRestoreQueue {
  const jobs: RestoreJobData[] = []
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
    complete: (instanceId) => emit({ instanceId, ok: true }),
    fail: (instanceId, reason) => emit({ instanceId, ok: false, reason }),
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
