/**
 * Entry point of the executor process: reads the configuration, builds the Redis client and wires
 * the signals. The executor itself, and the wiring of its units, is startExecutor (start.ts).
 */
import { errorMessage } from '../shared/errors.ts'
import { createLogger } from '../shared/logger.ts'
import { createRedis } from '../shared/redis.ts'
import { loadExecutorConfig } from './config.ts'
import { startExecutor, type RunningExecutor } from './start.ts'

const config = loadExecutorConfig(process.env)
const logger = createLogger({ level: config.INITLESS_LOG_LEVEL, name: 'executor' })
// Signals are handled from the first moment: one that arrives while the executor starts (it
// reconciles, then applies the registry's functions) stops it once started, so its shutdown
// still removes what it made. A second signal during start exits at once.
const started: { executor?: RunningExecutor } = {}
let stopping = false
const stop = () => void started.executor?.close().finally(() => process.exit(0))
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    logger.info({ signal }, 'shutting down')
    if (!started.executor && stopping) process.exit(1)
    stopping = true
    stop()
  })
}

started.executor = await startExecutor(config, {
  logger,
  redis: createRedis(config.INITLESS_REDIS_URL, { name: 'initless-executor' }),
}).catch((err: unknown) => {
  logger.fatal({ code: (err as { code?: unknown }).code, err: errorMessage(err) }, 'cannot start')
  process.exit(1)
})
if (stopping) stop()
