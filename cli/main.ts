/**
 * The `initless` CLI: composition root for command-line use. Exit codes: 0 success, 1 a check or
 * command failed, 2 bad usage or configuration.
 */
import { Command, CommanderError } from 'commander'
import { loadExecutorConfig } from '../executor/config.ts'
import { createFirewall } from '../executor/adapters/firewall.ts'
import { nativeBuildId } from '../executor/adapters/native.ts'
import { readThpMode } from '../executor/sandbox/restore-path.ts'
import { readRcuExpedited } from '../executor/sandbox/host-tuning.ts'
import { createHostAdapters, createSandboxes, createSelfTest } from '../executor/wiring.ts'
import { canonicalCidr } from '../shared/subnet.ts'
import { errorMessage, isInitlessError } from '../shared/errors.ts'
import { createRedis, redisVersion } from '../shared/redis.ts'
import { formatDoctorReport, probeImageRegistry, runDoctor } from './doctor.ts'
import { probeQueueRedis } from './queue-redis-probe.ts'
import { queueRedis } from './queue-redis.ts'
import { registerFunctionCommands } from './functions-commands.ts'
import { registerServeCommands } from './serve-commands.ts'
import { registerLifecycleCommands } from './lifecycle-commands.ts'
import { registerAsyncCommands } from './async-commands.ts'
import { registerSecretsCommands } from './secrets-commands.ts'
import { registerKeyCommands } from './keys-commands.ts'
import { registerBenchCommand } from './bench-command.ts'
import { createProgress, type CliIo } from './progress.ts'
import { registerServiceCommands } from './service/commands.ts'
import { createLogger } from '../shared/logger.ts'

export const EXIT_OK = 0
export const EXIT_FAILED = 1
export const EXIT_USAGE = 2

const program = new Command()
  .name('initless')
  .description('Serverless functions restored from CRIU snapshots instead of booted')
  .option('--json', 'print machine-readable JSON instead of text')
  .option('-q, --quiet', 'print only errors')
  .option('-v, --verbose', 'print the raw output of long steps (docker build, bake)')
  .exitOverride()

program
  .command('doctor')
  .description('check Docker, runc, CRIU, Redis and the kernel, then run a real checkpoint/restore probe')
  .option('--quick', 'skip the end-to-end restore probe')
  .action(async (opts: { quick?: boolean }) => {
    const config = loadExecutorConfig(process.env)
    const queue = queueRedis(process.env)
    const adapters = createHostAdapters(config, createLogger({ level: 'warn', name: 'initless-cli' }))
    const sandboxes = createSandboxes(config, adapters)
    const redis = createRedis(config.INITLESS_REDIS_URL, { lazy: true, name: 'initless-doctor' })
    // One connection attempt, no retry loop: the doctor reports, it does not wait for Redis.
    redis.options.retryStrategy = () => null
    let redisError: unknown
    redis.on('error', (err) => (redisError = err))
    try {
      const results = await runDoctor({
        run: adapters.run,
        nodeVersion: process.version,
        criuBin: config.INITLESS_CRIU,
        runcBin: config.INITLESS_RUNC,
        stateDir: config.INITLESS_STATE_DIR,
        minFreeDisk: config.INITLESS_MIN_FREE_DISK,
        redisUrl: config.INITLESS_REDIS_URL,
        sandboxHelper: {
          setting: config.INITLESS_SANDBOX_HELPER,
          path: adapters.helperPath,
          ...(adapters.helperPath ? { buildId: nativeBuildId(adapters.helperPath) } : {}),
        },
        restorePath: () => sandboxes.restorePath(),
        thpMode: () => readThpMode(),
        rcuExpedited: async () => readRcuExpedited(),
        dockerInfo: () => adapters.docker.info(),
        networkPolicy: {
          bridge: config.INITLESS_BRIDGE,
          status: () =>
            createFirewall({
              run: adapters.run,
              settings: { bridge: config.INITLESS_BRIDGE, subnet: canonicalCidr(config.INITLESS_SUBNET) },
            }).status(),
        },
        redisVersion: async () => {
          await redis.connect().catch((err: unknown) => {
            throw redisError ?? err
          })
          return redisVersion(redis)
        },
        imageRegistry: { address: config.INITLESS_IMAGE_REGISTRY, probe: probeImageRegistry },
        queueRedis: { ...queue, probe: () => probeQueueRedis(queue.url) },
        ...(opts.quick ? {} : { selfTest: createSelfTest(config, adapters, sandboxes) }),
      })
      print(results, formatDoctorReport(results))
      if (results.some((r) => !r.ok)) process.exitCode = EXIT_FAILED
    } finally {
      redis.disconnect()
    }
  })

// The global options are known once commander has parsed them: the lanes read them on each call.
let lanes: ReturnType<typeof createProgress> | undefined
const progress = () =>
  (lanes ??= createProgress({
    json: globalOpts().json ?? false,
    quiet: globalOpts().quiet ?? false,
    verbose: globalOpts().verbose ?? false,
    write: (text) => process.stderr.write(text),
    isTty: process.stderr.isTTY,
    columns: process.stderr.columns,
  }))
const io: CliIo = {
  print,
  progress: (line) => progress().progress(line),
  detail: (line) => progress().detail(line),
  activity: (text) => progress().activity(text),
}
registerFunctionCommands(program, io)
registerServeCommands(program, io)
registerLifecycleCommands(program, io)
registerBenchCommand(program, io)
registerServiceCommands(program, io)
registerAsyncCommands(program, io)
registerSecretsCommands(program, io)
registerKeyCommands(program, io)

function globalOpts(): { json?: boolean; quiet?: boolean; verbose?: boolean } {
  return program.opts<{ json?: boolean; quiet?: boolean; verbose?: boolean }>()
}

/** Print a command's result: JSON with --json, nothing with --quiet, else the text. */
export function print(data: unknown, text: string): void {
  const g = globalOpts()
  if (g.json) console.log(JSON.stringify(data, null, 2))
  else if (!g.quiet) console.log(text)
}

try {
  await program.parseAsync(process.argv)
} catch (err) {
  lanes?.close()
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode === 0 ? EXIT_OK : EXIT_USAGE
  } else {
    const g = globalOpts()
    if (g.json)
      console.log(
        JSON.stringify({
          error: { code: isInitlessError(err) ? err.code : 'ERR_INTERNAL', message: errorMessage(err) },
        }),
      )
    else console.error(`initless: ${errorMessage(err)}`)
    process.exitCode = isInitlessError(err, 'ERR_CONFIG_INVALID') ? EXIT_USAGE : EXIT_FAILED
  }
}
