import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino'

export type { Logger }

/**
 * Paths pino redacts wherever they appear in a logged object (headers of proxied requests). The
 * invocation keys travel in Authorization and X-Api-Key (docs/security.md).
 */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-api-key"]',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'headers.cookie',
  'headers["x-api-key"]',
  '*.authorization',
  '*["x-api-key"]',
  'key',
  '*.key',
]

/**
 * The one root logger of a process. Only composition roots (main.ts, the CLI) call this; modules
 * receive a logger in their deps and take `child({ module })`.
 */
export function createLogger(
  options: { level?: string; name?: string; destination?: DestinationStream } = {},
): Logger {
  const opts: LoggerOptions = {
    level: options.level ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { pid: process.pid, ...(options.name ? { name: options.name } : {}) },
    timestamp: pino.stdTimeFunctions.isoTime,
  }
  return options.destination ? pino(opts, options.destination) : pino(opts)
}

/** A logger that drops everything: the default in unit tests. */
export function createSilentLogger(): Logger {
  return pino({ level: 'silent' })
}
