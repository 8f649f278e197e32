/**
 * The per-request logger: a pino child with the request's bindings, built only when something is
 * logged at an enabled level. pino's child() serialises its bindings and copies the level methods
 * up front, which cost more than the rest of a warm request's bookkeeping, while most requests log
 * nothing at the default level.
 */
import type { Bindings, Level, Logger } from 'pino'

/** What request handlers log through: pino's level methods plus child(), both with pino's output. */
export interface RequestLog {
  debug(obj: object, msg?: string): void
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
  /** A logger with more bindings, as lazy as this one. */
  child(bindings: Bindings): RequestLog
}

class LazyChild implements RequestLog {
  readonly #root: Logger
  readonly #bindings: Bindings
  #logger: Logger | undefined

  constructor(root: Logger, bindings: Bindings) {
    this.#root = root
    this.#bindings = bindings
  }

  debug(obj: object, msg?: string): void {
    this.#write('debug', obj, msg)
  }

  info(obj: object, msg?: string): void {
    this.#write('info', obj, msg)
  }

  warn(obj: object, msg?: string): void {
    this.#write('warn', obj, msg)
  }

  error(obj: object, msg?: string): void {
    this.#write('error', obj, msg)
  }

  child(bindings: Bindings): RequestLog {
    // One pino child with the merged bindings writes the same lines as a child of a child.
    return new LazyChild(this.#root, { ...this.#bindings, ...bindings })
  }

  #write(level: Level, obj: object, msg: string | undefined): void {
    if (!this.#root.isLevelEnabled(level)) return
    this.#logger ??= this.#root.child(this.#bindings)
    this.#logger[level](obj, msg)
  }
}

/** A RequestLog writing through `root.child(bindings)`, created on the first enabled line. */
export function createRequestLog(root: Logger, bindings: Bindings): RequestLog {
  return new LazyChild(root, bindings)
}
