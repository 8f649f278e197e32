/**
 * Graceful shutdown: idempotent (a second signal joins the first), runs every step even when one
 * throws, and gives up waiting at a deadline (like BullMQ's close(), the steps never time out by
 * themselves).
 */
import type { Logger } from 'pino'
import { errorMessage } from '../shared/errors.ts'

export interface ShutdownStep {
  readonly name: string
  run(): Promise<unknown> | void
}

export interface ShutdownResult {
  /** Every step finished before the deadline without throwing. */
  readonly isClean: boolean
}

/** Returns the memoised shutdown function. Steps run in order within `deadlineMs` in total. */
export function createShutdown(deps: {
  readonly steps: readonly ShutdownStep[]
  readonly deadlineMs: number
  readonly logger: Logger
}): () => Promise<ShutdownResult> {
  const log = deps.logger.child({ module: 'shutdown' })
  let running: Promise<ShutdownResult> | undefined
  return () => {
    if (running) {
      log.info('shutdown already in progress')
      return running
    }
    running = (async () => {
      const deadline = performance.now() + deps.deadlineMs
      let isClean = true
      for (const step of deps.steps) {
        const left = deadline - performance.now()
        let timer: NodeJS.Timeout | undefined
        const expired = new Promise<'expired'>((resolve) => {
          timer = setTimeout(() => resolve('expired'), Math.max(0, left))
        })
        try {
          const outcome = await Promise.race([
            Promise.resolve(step.run()).then(() => 'done' as const),
            expired,
          ])
          if (outcome === 'expired') {
            isClean = false
            log.error({ step: step.name, code: 'ERR_SHUTDOWN_TIMEOUT' }, 'shutdown step passed the deadline')
          }
        } catch (err) {
          isClean = false
          log.error({ step: step.name, err: errorMessage(err) }, 'shutdown step failed')
        } finally {
          clearTimeout(timer)
        }
      }
      log.info({ isClean }, 'shutdown complete')
      return { isClean }
    })()
    return running
  }
}

/** The parts of an http.Server that draining uses. */
export interface DrainableServer {
  close(callback?: (err?: Error) => void): unknown
  closeIdleConnections(): void
  closeAllConnections(): void
}

/**
 * Stop accepting connections and wait for in-flight requests; after `graceMs` cut the rest off.
 * Idle keep-alive connections are closed at once.
 */
export function drainServer(server: DrainableServer, graceMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      server.closeAllConnections()
      resolve()
    }, graceMs)
    server.close(() => {
      clearTimeout(timer)
      resolve()
    })
    server.closeIdleConnections()
  })
}
