/**
 * `initless service install` and `uninstall`: write the units planned by units.ts and the env file,
 * enable them through the ServiceManager port, and remove exactly what was written. All file
 * system work happens in the directories given, so tests point them at temporary ones.
 */
import { constants } from 'node:fs'
import { access, mkdir, readFile, rename, rm, rmdir, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { errorMessage, InitlessError } from '../../shared/errors.ts'
import { parseEnvFile, pickSettings, redactSettings, renderEnvFile, type Settings } from './env-file.ts'
import { queueRedis, queueRedisEnv } from '../queue-redis.ts'
import type { ServiceManager } from './service-manager.ts'
import {
  isManaged,
  MANAGED_UNITS,
  planService,
  renderUnits,
  type QueueRedisPlan,
  type RedisPlan,
  type ServicePlan,
} from './units.ts'

export interface ServiceDeps {
  readonly manager: ServiceManager
  /** The CLI's environment: its INITLESS_* settings go into a new env file. */
  readonly env: Readonly<Record<string, string | undefined>>
  readonly cwd: string
  /** The install's root (the repository or the unpacked package). */
  readonly root: string
  readonly node: string
  readonly redisServer: string
  readonly exists: (path: string) => boolean
}

export interface InstallOptions {
  readonly unitDir: string
  readonly envFile: string
  /** Rewrite the env file from `env` even when it exists. */
  readonly force: boolean
  readonly dryRun: boolean
  /** Start the units too. */
  readonly now: boolean
  /** false: no Redis unit, no dependency on one (--no-redis). */
  readonly redis: boolean
}

export interface InstallResult {
  readonly dryRun: boolean
  readonly units: readonly { name: string; path: string; changed: boolean; text: string }[]
  /** Units of ours the new plan no longer has (initless-redis.service after a Redis change). */
  readonly removed: readonly string[]
  /** Files with a planned unit's name that initless did not write: install refuses while they exist. */
  readonly conflicts: readonly string[]
  readonly envFile: {
    readonly path: string
    readonly action: 'write' | 'keep'
    /** Secrets redacted. */
    readonly settings: Settings
    readonly text: string
  }
  /** INITLESS_* variables of the CLI's environment that no service process reads. */
  readonly ignored: readonly string[]
  readonly redis: RedisPlan
  readonly queueRedis: QueueRedisPlan
  readonly enabled: readonly string[]
  readonly started: boolean
  /** Set for a dry run on a host without systemd: what install would say there. */
  readonly withoutSystemd?: string
}

export async function installService(deps: ServiceDeps, opts: InstallOptions): Promise<InstallResult> {
  const existing = await readIfExists(opts.envFile, 'env file')
  const keep = existing !== undefined && !opts.force
  const picked = keep
    ? { settings: parseEnvFile(existing, opts.envFile), ignored: [] }
    : withQueueRedis(pickSettings(deps.env, deps.cwd), deps.env)
  // Rendered first: a value the file cannot hold is refused before anything else.
  const envText = keep ? undefined : renderEnvFile(picked.settings)
  const plan = planService({
    settings: picked.settings,
    root: deps.root,
    node: deps.node,
    envFile: opts.envFile,
    redisServer: deps.redisServer,
    manageRedis: opts.redis,
    exists: deps.exists,
  })
  const booted = await deps.manager.isBooted()
  if (!booted && !opts.dryRun) throw noSystemd(plan, 'install')

  const planned = renderUnits(plan)
  const current = new Map<string, string | undefined>()
  for (const name of MANAGED_UNITS)
    current.set(name, await readIfExists(join(opts.unitDir, name), 'unit file'))
  const units = planned.map((u) => ({
    name: u.name,
    path: join(opts.unitDir, u.name),
    changed: current.get(u.name) !== u.text,
    text: u.text,
  }))
  const removed = MANAGED_UNITS.filter(
    (name) => !planned.some((u) => u.name === name) && isManaged(current.get(name) ?? ''),
  )
  const conflicts = units
    .filter((u) => {
      const text = current.get(u.name)
      return text !== undefined && !isManaged(text)
    })
    .map((u) => u.path)
  const result: InstallResult = {
    dryRun: opts.dryRun,
    units,
    removed,
    conflicts,
    envFile: {
      path: opts.envFile,
      action: keep ? 'keep' : 'write',
      settings: redactSettings(picked.settings),
      text: renderEnvFile(redactSettings(picked.settings)),
    },
    ignored: picked.ignored,
    redis: plan.redis,
    queueRedis: plan.queueRedis,
    enabled: units.map((u) => u.name),
    started: opts.now && !opts.dryRun,
    ...(booted ? {} : { withoutSystemd: noSystemd(plan, 'install').message }),
  }
  if (opts.dryRun) return result

  if (conflicts.length)
    throw new InitlessError(
      'ERR_SERVICE_UNIT_CONFLICT',
      `${conflicts.join(', ')} ${conflicts.length > 1 ? 'exist' : 'exists'} and initless did not write ` +
        `${conflicts.length > 1 ? 'them' : 'it'} (no '# Managed by initless' first line): move it away ` +
        '(after `systemctl disable --now` of the unit), then run install again',
    )
  await access(opts.unitDir, constants.W_OK).catch((err: unknown) => {
    throw fileError(err, `cannot write units to ${opts.unitDir}`)
  })

  if (envText !== undefined) {
    await mkdir(dirname(opts.envFile), { recursive: true, mode: 0o755 }).catch((err: unknown) => {
      throw fileError(err, `cannot create ${dirname(opts.envFile)}`)
    })
    await writeAtomic(opts.envFile, envText, 0o600)
  }
  const redis = plan.redis
  if (redis.kind === 'own')
    await mkdir(redis.dir, { recursive: true, mode: 0o700 }).catch((err: unknown) => {
      throw fileError(err, `cannot create Redis's data dir ${redis.dir}`)
    })
  for (const u of units) if (u.changed) await writeAtomic(u.path, u.text, 0o644)
  if (removed.length) {
    await deps.manager.disable(removed)
    for (const name of removed) await removeFile(join(opts.unitDir, name))
  }
  await deps.manager.reload()
  await deps.manager.enable(result.enabled, { now: opts.now })
  return result
}

/**
 * A new env file names the queue Redis the gateway should use as `initless up` would
 * (cli/queue-redis.ts): the provisioned one while the registry's Redis is on this host. Explicit
 * settings stay; INITLESS_ASYNC_REDIS_PORT (provisioning's) is read here, not written.
 */
function withQueueRedis(
  picked: { settings: Settings; ignored: string[] },
  env: Readonly<Record<string, string | undefined>>,
): { settings: Settings; ignored: string[] } {
  const queue = queueRedis({ ...picked.settings, INITLESS_ASYNC_REDIS_PORT: env.INITLESS_ASYNC_REDIS_PORT })
  return {
    settings: { ...picked.settings, ...queueRedisEnv(queue) },
    ignored: picked.ignored.filter((k) => k !== 'INITLESS_ASYNC_REDIS_PORT'),
  }
}

export interface UninstallOptions {
  readonly unitDir: string
  readonly envFile: string
  /** Remove the env file too. */
  readonly purge: boolean
  readonly dryRun: boolean
}

export interface UninstallResult {
  readonly dryRun: boolean
  /** Units of ours: stopped, disabled and removed. */
  readonly removed: readonly string[]
  /** Files with one of our unit names that initless did not write: never touched. */
  readonly leftAlone: readonly string[]
  readonly envFile: { readonly path: string; readonly removed: boolean }
}

export async function uninstallService(
  deps: Pick<ServiceDeps, 'manager'>,
  opts: UninstallOptions,
): Promise<UninstallResult> {
  if (!(await deps.manager.isBooted()) && !opts.dryRun)
    throw new InitlessError(
      'ERR_SERVICE_NO_SYSTEMD',
      'systemd is not running on this host (no /run/systemd/system): there is no initless service to uninstall. ' +
        'An executor and gateway started by hand stop with kill -TERM (docs/service.md).',
    )
  const ours: string[] = []
  const leftAlone: string[] = []
  for (const name of MANAGED_UNITS) {
    const path = join(opts.unitDir, name)
    const text = await readIfExists(path, 'unit file')
    if (text === undefined) continue
    if (isManaged(text)) ours.push(name)
    else leftAlone.push(path)
  }
  const envExists = (await readIfExists(opts.envFile, 'env file')) !== undefined
  const result = {
    dryRun: opts.dryRun,
    removed: ours,
    leftAlone,
    envFile: { path: opts.envFile, removed: opts.purge && envExists },
  }
  if (opts.dryRun) return result
  if (ours.length) {
    // One call: systemd orders the stop jobs by the units' After=, the gateway before the executor.
    await deps.manager.disable(ours)
    for (const name of ours) await removeFile(join(opts.unitDir, name))
    await deps.manager.reload()
  }
  if (result.envFile.removed) {
    await removeFile(opts.envFile)
    // The directory goes too when nothing else is in it.
    await rmdir(dirname(opts.envFile)).catch(() => undefined)
  }
  return result
}

/** ERR_SERVICE_NO_SYSTEMD, saying what to run instead. */
function noSystemd(plan: ServicePlan, what: string): InitlessError {
  return new InitlessError(
    'ERR_SERVICE_NO_SYSTEMD',
    `systemd is not running on this host (no /run/systemd/system): cannot ${what} initless as a system service.\n` +
      withoutSystemd(plan),
  )
}

/** Where the commands for hosts without systemd put the processes' output and pid files. */
export const BACKGROUND_DIRS = { log: '/var/log/initless', run: '/run/initless' }

/** A word for sh: single-quoted unless it is plainly safe. */
export function shellWord(s: string): string {
  return /^[A-Za-z0-9_./:,@%+=-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`
}

/**
 * The commands that run executor and gateway without systemd, as the units would: from the
 * install's root, with the env file's settings (this shell's when there is none), in the background.
 */
export function withoutSystemd(
  plan: Pick<ServicePlan, 'root' | 'envFile' | 'executor' | 'gateway'>,
  dirs = BACKGROUND_DIRS,
): string {
  const env = shellWord(plan.envFile)
  const [log, run] = [shellWord(dirs.log), shellWord(dirs.run)]
  const start = (name: string, argv: readonly string[]) =>
    `  nohup ${argv.map(shellWord).join(' ')} >>${log}/${name}.log 2>&1 </dev/null & echo $! >${run}/${name}.pid`
  const pid = (name: string) => `$(cat ${run}/${name}.pid)`
  return [
    'Run it in the foreground instead:',
    '  npx initless up',
    `or start the executor and the gateway in the background, as root, with the settings in ${plan.envFile}`,
    "(this shell's INITLESS_* settings when that file does not exist):",
    `  cd ${shellWord(plan.root)}`,
    `  set -a; [ ! -f ${env} ] || . ${env}; set +a`,
    `  mkdir -p ${log} ${run}`,
    start('executor', plan.executor),
    start('gateway', plan.gateway),
    'Stop them, the gateway first (the executor stops its instances before it exits):',
    `  kill ${pid('gateway')}; tail --pid=${pid('gateway')} -f /dev/null; kill ${pid('executor')}`,
  ].join('\n')
}

async function readIfExists(path: string, what: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw fileError(err, `cannot read the ${what} ${path}`)
  }
}

/** Write via a temporary file and rename: a unit or env file is never seen half-written. */
async function writeAtomic(path: string, text: string, mode: number): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`
  try {
    await writeFile(tmp, text, { mode })
    await rename(tmp, path)
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined)
    throw fileError(err, `cannot write ${path}`)
  }
}

async function removeFile(path: string): Promise<void> {
  await rm(path, { force: true }).catch((err: unknown) => {
    throw fileError(err, `cannot remove ${path}`)
  })
}

function fileError(err: unknown, what: string): InitlessError {
  const code = (err as NodeJS.ErrnoException).code
  const hint =
    code === 'EACCES' || code === 'EPERM'
      ? ' (run as root)'
      : code === 'ENOENT' || code === 'ENOTDIR'
        ? ' (no such directory)'
        : ''
  return new InitlessError('ERR_SERVICE_FILE_FAILED', `${what}: ${errorMessage(err)}${hint}`, { cause: err })
}
