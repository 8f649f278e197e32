/**
 * `initless service install|uninstall`: the thin commands over install.ts, wired to the real
 * systemctl, the CLI's environment and this install's location.
 */
import { existsSync } from 'node:fs'
import { delimiter, join, resolve } from 'node:path'
import type { Command } from 'commander'
import { packageRoot } from '../../shared/package-root.ts'
import type { CliIo } from '../progress.ts'
import {
  installService,
  uninstallService,
  type InstallResult,
  type ServiceDeps,
  type UninstallResult,
} from './install.ts'
import { createSystemctl } from './systemctl.ts'
import { EXECUTOR_UNIT, GATEWAY_UNIT, type QueueRedisPlan, type RedisPlan } from './units.ts'

const DEFAULT_UNIT_DIR = '/etc/systemd/system'
const DEFAULT_ENV_FILE = '/etc/initless/initless.env'
// The env file's option is --settings: Node 20 takes an `--env-file` anywhere on its command line,
// after the script too, as its own option (and exits 9 when the file is missing).

export function registerServiceCommands(program: Command, io: CliIo): void {
  const service = program
    .command('service')
    .description(
      'run initless as systemd services: the executor, the gateway and, if initless started it, Redis',
    )

  withLocations(service.command('install'))
    .description('write the systemd units and the env file, then enable the units (docs/service.md)')
    .option('--force', "rewrite the env file from this shell's INITLESS_* settings even if it exists")
    .option('--now', 'start the units too')
    .option('--no-redis', 'neither write nor depend on a Redis unit (Redis is looked after elsewhere)')
    .option('--dry-run', 'print the units and the env file (secrets redacted); write nothing')
    .action(
      async (opts: {
        unitDir: string
        settings: string
        force?: boolean
        now?: boolean
        redis: boolean
        dryRun?: boolean
      }) => {
        const result = await installService(realDeps(), {
          unitDir: resolve(opts.unitDir),
          envFile: resolve(opts.settings),
          force: opts.force ?? false,
          now: opts.now ?? false,
          redis: opts.redis,
          dryRun: opts.dryRun ?? false,
        })
        if (result.ignored.length)
          io.progress(
            `warning: not written to the env file, no service process reads them: ${result.ignored.join(' ')}`,
          )
        io.print(result, formatInstall(result))
      },
    )

  withLocations(service.command('uninstall'))
    .description('stop, disable and remove the units initless wrote (never others); keep the env file')
    .option('--purge', 'remove the env file too')
    .option('--dry-run', 'say what would be removed; change nothing')
    .action(async (opts: { unitDir: string; settings: string; purge?: boolean; dryRun?: boolean }) => {
      const result = await uninstallService(
        { manager: manager() },
        {
          unitDir: resolve(opts.unitDir),
          envFile: resolve(opts.settings),
          purge: opts.purge ?? false,
          dryRun: opts.dryRun ?? false,
        },
      )
      io.print(result, formatUninstall(result))
    })
}

/** Where the units and the env file are: the options both subcommands share. */
function withLocations(command: Command): Command {
  return command
    .option('--unit-dir <dir>', 'the directory of the units', DEFAULT_UNIT_DIR)
    .option('--settings <file>', 'the env file of INITLESS_* settings the units read', DEFAULT_ENV_FILE)
}

/** INITLESS_SYSTEMD_MARKER stands in for /run/systemd/system in tests, as in scripts/daemons.sh. */
const manager = () => createSystemctl({ marker: process.env.INITLESS_SYSTEMD_MARKER })

function realDeps(): ServiceDeps {
  return {
    manager: manager(),
    env: process.env,
    cwd: process.cwd(),
    root: packageRoot(),
    node: process.execPath,
    redisServer: findInPath('redis-server', process.env.PATH ?? '') ?? '/usr/bin/redis-server',
    exists: existsSync,
  }
}

/** The first `name` in the directories of PATH (systemd wants absolute paths in ExecStart). */
function findInPath(name: string, path: string): string | undefined {
  return path
    .split(delimiter)
    .filter((d) => d.startsWith('/'))
    .map((d) => join(d, name))
    .find((p) => existsSync(p))
}

function describeRedis(redis: RedisPlan): string {
  switch (redis.kind) {
    case 'system':
      return `Redis: the units depend on ${redis.unit} (Debian's, as provision.sh uses for port 6379)`
    case 'own':
      return `Redis: ${redis.unit} runs Redis on 127.0.0.1:${redis.port} (data in ${redis.dir}), as provision.sh started it`
    case 'external':
      return `Redis: no unit, no dependency: ${redis.reason}`
  }
}

function describeQueueRedis(queue: QueueRedisPlan, settings: Readonly<Record<string, string>>): string {
  const url = settings.INITLESS_ASYNC_REDIS_URL
  switch (queue.kind) {
    case 'same':
      return 'queue Redis: the registry’s (INITLESS_ASYNC_REDIS_URL unset): `initless doctor` says whether a 202 is fsynced there'
    case 'system':
      return `queue Redis: ${url ?? ''}; the gateway depends on ${queue.unit} (provision.sh enables it, appendfsync always)`
    case 'external':
      return `queue Redis: ${url ?? ''}, no dependency: ${queue.reason}`
  }
}

const LOGS = `logs: journalctl -u ${EXECUTOR_UNIT} -u ${GATEWAY_UNIT} -f`

export function formatInstall(r: InstallResult): string {
  const env = r.envFile
  if (r.dryRun)
    return [
      '# dry run: nothing written',
      ...r.units.map((u) => `# ${u.path}${u.changed ? '' : ' (unchanged)'}\n${u.text}`),
      env.action === 'write'
        ? `# ${env.path} (would be written, mode 0600; secrets redacted)\n${env.text}`
        : `# ${env.path} exists and is kept (--force rewrites it); its settings, secrets redacted:\n${env.text}`,
      ...r.removed.map((name) => `# would remove ${name} (no longer needed)`),
      ...r.conflicts.map((path) => `# would refuse: ${path} exists and initless did not write it`),
      `# ${describeRedis(r.redis)}`,
      `# ${describeQueueRedis(r.queueRedis, r.envFile.settings)}`,
      ...(r.withoutSystemd ? ['', r.withoutSystemd] : []),
    ].join('\n')
  return [
    ...r.units.map((u) => `${u.changed ? 'wrote' : 'unchanged'} ${u.path}`),
    env.action === 'write'
      ? `wrote ${env.path} (mode 0600, ${Object.keys(env.settings).length} settings)`
      : `kept ${env.path} (--force rewrites it from this shell's INITLESS_* settings)`,
    ...r.removed.map((name) => `removed ${name} (no longer needed)`),
    describeRedis(r.redis),
    describeQueueRedis(r.queueRedis, r.envFile.settings),
    `enabled${r.started ? ' and started' : ''}: ${r.enabled.join(' ')}`,
    ...(r.started
      ? []
      : [
          `start: systemctl start ${GATEWAY_UNIT} (its Wants= starts the executor)`,
          `after a change: systemctl restart ${EXECUTOR_UNIT} ${GATEWAY_UNIT}`,
        ]),
    LOGS,
  ].join('\n')
}

export function formatUninstall(r: UninstallResult): string {
  const verb = r.dryRun ? 'would stop, disable and remove' : 'stopped, disabled and removed'
  return [
    r.removed.length ? `${verb}: ${r.removed.join(' ')}` : 'no unit initless wrote was found',
    ...r.leftAlone.map((path) => `left alone (initless did not write it): ${path}`),
    r.envFile.removed
      ? `${r.dryRun ? 'would remove' : 'removed'} ${r.envFile.path}`
      : `kept ${r.envFile.path} if present (--purge removes it)`,
  ].join('\n')
}
