/**
 * `initless bench [options]`: runs bench/run.ts (the benchmark: cold-start matrix, burst from zero,
 * warm path) in its own process with the options passed through unchanged (`initless bench --help`
 * lists them), so the benchmark keeps one composition root and one place that parses its options.
 */
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import type { Command } from 'commander'
import { packageRoot } from '../shared/package-root.ts'
import type { CliIo } from './progress.ts'

export function registerBenchCommand(program: Command, _io: CliIo): void {
  program
    .command('bench')
    .description(
      'benchmark through the gateway (cold starts per runtime, burst from zero, warm path vs nginx); ' +
        'writes bench/results/ (--help for options)',
    )
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .action(async (_opts: unknown, cmd: Command) => {
      const args = cmd.args
      const root = packageRoot()
      // The benchmark is a development tool (autocannon, vega): it runs from its sources with tsx.
      const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'bench', 'run.ts'), ...args], {
        cwd: root,
        stdio: 'inherit',
        // Recorded in the results as the command that produced them.
        env: { ...process.env, INITLESS_BENCH_COMMAND: ['npx initless bench', ...args].join(' ') },
      })
      // Ctrl-C reaches the whole process group; a SIGTERM sent to the CLI alone is passed on, so
      // the benchmark still stops everything it started.
      const forward = (signal: NodeJS.Signals) => () => child.kill(signal)
      process.on('SIGTERM', forward('SIGTERM'))
      process.on('SIGINT', () => undefined)
      const code = await new Promise<number>((resolve) => {
        child.once('error', () => resolve(1))
        child.once('exit', (c, signal) => resolve(c ?? (signal ? 128 + 2 : 1)))
      })
      process.exitCode = code
    })
}
