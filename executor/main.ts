/**
 * Entry point of the executor process: reads the configuration, builds the Redis client and wires
 * the signals. The executor itself, and the wiring of its units, is startExecutor (start.ts).
 */
import { errorMessage } from '../shared/errors.ts'
import { createLogger } from '../shared/logger.ts'
import { createRedis } from '../shared/redis.ts'
import { closeOnSignals } from '../shared/shutdown.ts'
import { loadExecutorConfig } from './config.ts'
import { startExecutor } from './start.ts'

const config = loadExecutorConfig(process.env)
const logger = createLogger({ level: config.INITLESS_LOG_LEVEL, name: 'executor' })
const executor = startExecutor(config, {
  logger,
  redis: createRedis(config.INITLESS_REDIS_URL, { name: 'initless-executor' }),
}).catch((err: unknown) => {
  logger.fatal({ code: (err as { code?: unknown }).code, err: errorMessage(err) }, 'cannot start')
  process.exit(1)
})

// A shutdown that passed its deadline still exits 0: what it left, the next start reconciles.
closeOnSignals(logger, executor, () => 0)
