/**
 * Graceful shutdown of a process: idempotent (a second signal joins the first), runs every step
 * even when one throws, and gives up waiting at a deadline (like BullMQ's close(), the steps never
 * time out by themselves). Used by the gateway and the executor.
 */
import type { Logger } from 'pino'
import { errorMessage } from './errors.ts'

/** How long a step's onTimeout (a forced close) may take, in ms. */
export const FORCE_TIMEOUT_MS = 5_000

export interface ShutdownStep {
  readonly name: string
  run(): Promise<unknown> | void
  /**
   * How long to wait for this step, in ms from its start. Default: what is left of the deadline.
   * Infinity for a cleanup that must finish whatever the deadline (nothing may be left behind).
   */
  readonly timeoutMs?: number
  /** Runs when the step passed its wait (e.g. a forced close), within FORCE_TIMEOUT_MS. */
  onTimeout?(): Promise<unknown> | void
}

export interface ShutdownResult {
  /** Every step finished within its wait without throwing. */
  readonly isClean: boolean
}

/** `promise`, or a rejection after `ms`. */
export function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

/** Returns the memoised shutdown function. Steps run in order within `deadlineMs` in total. */
export function createShutdown(deps: {
  readonly steps: readonly ShutdownStep[]
  readonly deadlineMs: number
  readonly logger: Logger
}): () => Promise<ShutdownResult> {
  const log = deps.logger.child({ module: 'shutdown' })
  const forced = (step: ShutdownStep) =>
    within(
      Promise.resolve().then(() => step.onTimeout?.()),
      FORCE_TIMEOUT_MS,
    ).catch((err: unknown) =>
      log.error({ step: step.name, err: errorMessage(err) }, 'forced shutdown step failed'),
    )
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
        const waitMs = step.timeoutMs ?? Math.max(0, deadline - performance.now())
        let timer: NodeJS.Timeout | undefined
        const expired = new Promise<'expired'>((resolve) => {
          if (waitMs !== Infinity) timer = setTimeout(() => resolve('expired'), waitMs)
        })
        try {
          const done = Promise.resolve().then(() => step.run())
          const outcome = await Promise.race([done.then(() => 'done' as const), expired])
          if (outcome === 'expired') {
            isClean = false
            log.error({ step: step.name, code: 'ERR_SHUTDOWN_TIMEOUT' }, 'shutdown step passed the deadline')
            if (step.onTimeout) await forced(step)
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

/**
 * Close the process on SIGINT or SIGTERM, also when the signal arrives while it is still starting:
 * the handlers are in place before start, and a signal during start waits for it, then closes.
 * A service manager's stop during start-up must not leave sandboxes, rules or containers behind.
 * Exits with `exitCode` of the shutdown's result, 1 when start failed (its caller reports that).
 */
export function closeOnSignals(
  logger: Logger,
  started: Promise<{ close(): Promise<ShutdownResult> }>,
  exitCode: (result: ShutdownResult) => number,
  exit: (code: number) => void = (code) => process.exit(code),
): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      logger.info({ signal }, 'shutting down')
      started.then(
        (running) => running.close().then((result) => exit(exitCode(result))),
        () => exit(1),
      )
    })
  }
}
