/**
 * The systemd units of an initless install, generated from a plan by pure functions: what
 * `initless service install` writes, and what its tests read. docs/service.md explains each choice
 * for users; the comments here and in the units say why.
 */
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { loadExecutorConfig } from '../../executor/config.ts'
import { loadGatewayConfig } from '../../gateway/config.ts'
import { configInvalid } from '../../shared/config-schema.ts'
import { isInitlessError } from '../../shared/errors.ts'
import { isLocalRedisUrl } from '../queue-redis.ts'
import type { Settings } from './env-file.ts'
import { processCommand } from './process-command.ts'

/** First line of every unit initless writes; uninstall removes only files that start with it. */
export const MANAGED_MARKER = '# Managed by initless'

export const EXECUTOR_UNIT = 'initless-executor.service'
export const GATEWAY_UNIT = 'initless-gateway.service'
export const OWN_REDIS_UNIT = 'initless-redis.service'
/** Debian's unit, which provision.sh starts on a systemd host for Redis on port 6379. */
export const SYSTEM_REDIS_UNIT = 'redis-server.service'
/**
 * The queue Redis provision.sh starts on a systemd host: an instance of Debian's template unit,
 * reading /etc/redis/redis-initless-queue.conf (appendfsync always). Depended on, never written.
 */
export const QUEUE_REDIS_UNIT = 'redis-server@initless-queue.service'
/** Every unit name initless may write, in the order systemd should stop them. */
export const MANAGED_UNITS = [GATEWAY_UNIT, EXECUTOR_UNIT, OWN_REDIS_UNIT] as const

/**
 * Seconds past INITLESS_SHUTDOWN_TIMEOUT that systemd waits before SIGKILL. The executor's deadline
 * covers the running restores only; after it come three steps bounded at 5 s each (forced worker
 * close, the events subscription, Redis: 15 s) and unbounded ones (stopping every instance,
 * removing Docker templates and export containers): 30 s more for those.
 */
export const EXECUTOR_STOP_MARGIN_S = 45
/** The gateway's shutdown runs all its steps within its deadline; the margin covers process exit. */
export const GATEWAY_STOP_MARGIN_S = 5

export type RedisPlan =
  /** No Redis unit and no dependency on one. */
  | { readonly kind: 'external'; readonly reason: string }
  /** Debian's redis-server.service: depended on, never written. */
  | { readonly kind: 'system'; readonly unit: typeof SYSTEM_REDIS_UNIT }
  /** The Redis provision.sh starts itself (a port other than 6379): written as initless-redis.service. */
  | {
      readonly kind: 'own'
      readonly unit: typeof OWN_REDIS_UNIT
      readonly port: number
      readonly dir: string
      readonly bin: string
    }

export type QueueRedisPlan =
  /** The queues share the registry's Redis (INITLESS_ASYNC_REDIS_URL unset or the same). */
  | { readonly kind: 'same' }
  /** provision.sh's queue Redis on this host: the gateway depends on its unit. */
  | { readonly kind: 'system'; readonly unit: typeof QUEUE_REDIS_UNIT }
  /** No dependency. */
  | { readonly kind: 'external'; readonly reason: string }

export interface ServicePlan {
  readonly root: string
  readonly envFile: string
  readonly executor: readonly string[]
  readonly gateway: readonly string[]
  readonly executorStopSec: number
  readonly gatewayStopSec: number
  /** INITLESS_GATEWAY_PORT: below 1024 the gateway needs CAP_NET_BIND_SERVICE. */
  readonly gatewayPort: number
  readonly redis: RedisPlan
  /** The Redis of the asynchronous invocation queues (only the gateway uses it). */
  readonly queueRedis: QueueRedisPlan
}

export interface PlanInput {
  /** The settings the units' processes will read (the env file's). */
  readonly settings: Settings
  /** The install's root: the working directory of both processes. */
  readonly root: string
  /** Absolute path of the node binary. */
  readonly node: string
  readonly envFile: string
  /** Absolute path of redis-server, for a Redis unit of initless's own. */
  readonly redisServer: string
  /** false (--no-redis): Redis is looked after elsewhere; no unit for it, no dependency on it. */
  readonly manageRedis: boolean
  readonly exists: (path: string) => boolean
}

/**
 * Validate the settings as both processes will (every problem of both listed at once) and decide
 * what to install.
 */
export function planService(input: PlanInput): ServicePlan {
  const env = input.settings
  const problems: { key: string; message: string }[] = []
  for (const [key, value] of [
    ['install root', input.root],
    ['node', input.node],
    ['env file', input.envFile],
  ] as const) {
    if (!value.startsWith('/') || hasControlChars(value))
      problems.push({
        key,
        message: `expected an absolute path without control characters, got ${JSON.stringify(value)}`,
      })
  }
  const load = <T>(fn: () => T): T | undefined => {
    try {
      return fn()
    } catch (err) {
      if (!isInitlessError(err, 'ERR_CONFIG_INVALID')) throw err
      const lines = (err.details.problems as string[] | undefined) ?? [err.message]
      for (const line of lines) {
        const [key = '', ...rest] = line.trim().split(': ')
        if (!problems.some((p) => p.key === key && p.message === rest.join(': ')))
          problems.push({ key, message: rest.join(': ') })
      }
      return undefined
    }
  }
  const executor = load(() => loadExecutorConfig(env))
  const gateway = load(() => loadGatewayConfig(env))
  if (!executor || !gateway || problems.length) throw configInvalid(problems)
  return {
    root: input.root,
    envFile: input.envFile,
    executor: processCommand('executor', input.root, input),
    gateway: processCommand('gateway', input.root, input),
    executorStopSec: Math.ceil(executor.INITLESS_SHUTDOWN_TIMEOUT / 1000) + EXECUTOR_STOP_MARGIN_S,
    gatewayStopSec: Math.ceil(gateway.INITLESS_SHUTDOWN_TIMEOUT / 1000) + GATEWAY_STOP_MARGIN_S,
    gatewayPort: gateway.INITLESS_GATEWAY_PORT,
    redis: planRedis(executor.INITLESS_REDIS_URL, executor.INITLESS_STATE_DIR, input),
    queueRedis: planQueueRedis(gateway.INITLESS_ASYNC_REDIS_URL, gateway.INITLESS_REDIS_URL, input),
  }
}

// eslint-disable-next-line no-control-regex -- control characters are what it looks for
const hasControlChars = (s: string) => /[\x00-\x1f\x7f]/.test(s)

/**
 * Which Redis the processes depend on, from where INITLESS_REDIS_URL points, mirroring
 * scripts/provision.sh: on a systemd host it starts Debian's redis-server.service for port 6379
 * and its own `redis-server` (data in `<state dir>/redis`) for any other port.
 */
export function planRedis(
  url: string,
  stateDir: string,
  opts: { readonly manageRedis: boolean; readonly redisServer: string },
): RedisPlan {
  if (!opts.manageRedis) return { kind: 'external', reason: 'not managed here (--no-redis)' }
  const u = new URL(url)
  const port = Number(u.port || 6379)
  if (!isLocalRedisUrl(url))
    return {
      kind: 'external',
      reason: `${u.protocol}//${u.host} is not a Redis provision.sh starts on this host`,
    }
  if (port === 6379) return { kind: 'system', unit: SYSTEM_REDIS_UNIT }
  return { kind: 'own', unit: OWN_REDIS_UNIT, port, dir: join(stateDir, 'redis'), bin: opts.redisServer }
}

/**
 * What the gateway's queue Redis needs from systemd: a local one is the one provision.sh enabled as
 * redis-server@initless-queue.service (it survives reboots through its unit, and the gateway is
 * ordered after it); any other is looked after elsewhere.
 */
export function planQueueRedis(
  url: string | undefined,
  registryUrl: string,
  opts: { readonly manageRedis: boolean },
): QueueRedisPlan {
  if (url === undefined || url === registryUrl) return { kind: 'same' }
  if (!opts.manageRedis) return { kind: 'external', reason: 'not managed here (--no-redis)' }
  if (!isLocalRedisUrl(url))
    return {
      kind: 'external',
      reason: `${new URL(url).host} is not a Redis provision.sh starts on this host`,
    }
  return { kind: 'system', unit: QUEUE_REDIS_UNIT }
}

export interface UnitFile {
  readonly name: string
  readonly text: string
}

/** The units to write for `plan`: executor, gateway and, for initless's own Redis, that one. */
export function renderUnits(plan: ServicePlan): UnitFile[] {
  const redis = plan.redis.kind === 'external' ? [] : [plan.redis.unit]
  const units = [
    { name: EXECUTOR_UNIT, text: executorUnit(plan, redis) },
    { name: GATEWAY_UNIT, text: gatewayUnit(plan, redis) },
  ]
  if (plan.redis.kind === 'own') units.push({ name: OWN_REDIS_UNIT, text: redisUnit(plan.redis) })
  return units
}

/** Whether a unit file's text is one initless wrote. */
export function isManaged(text: string): boolean {
  return text.startsWith(MANAGED_MARKER)
}

const HEADER = `${MANAGED_MARKER}: written by \`initless service install\`, removed by \`initless service uninstall\`.
# Edits are overwritten by the next install; settings belong in the env file.`

/** `%` starts a specifier in every unit setting. */
const unitValue = (s: string) => s.replace(/%/g, '%%')

/**
 * One ExecStart argument: `%` and `$` escaped (specifiers, variables), double-quoted with C-style
 * escapes when it is empty or holds blanks, quotes or backslashes; a lone `;` separates commands.
 */
function execArg(arg: string): string {
  if (arg === ';') return '\\;'
  const escaped = unitValue(arg).replace(/\$/g, () => '$$')
  return /^[^\s"'\\]+$/.test(escaped) ? escaped : `"${escaped.replace(/["\\]/g, '\\$&')}"`
}

const execLine = (argv: readonly string[]) => argv.map(execArg).join(' ')

function serviceCommon(plan: ServicePlan, argv: readonly string[]): string[] {
  return [
    'Type=exec',
    `WorkingDirectory=${unitValue(plan.root)}`,
    // provision.sh installs CRIU in /usr/local/sbin, ahead of any distribution CRIU: runc finds
    // criu through PATH, so the order is pinned here rather than left to systemd's default.
    'Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    // Required: a service must not start with settings silently missing (another Redis, subnet).
    `EnvironmentFile=${unitValue(plan.envFile)}`,
    `ExecStart=${execLine(argv)}`,
    // A start that keeps failing (state dir or subnet in use, bad settings) stops after 5 tries.
    'Restart=on-failure',
    'RestartSec=2s',
  ]
}

/** [Unit] of executor and gateway: wanted and ordered after `deps`, for the reasons in `why`. */
function unitSection(description: string, plan: ServicePlan, deps: string[], why: string[]): string[] {
  return [
    '[Unit]',
    `Description=${description}`,
    `Documentation=${unitValue(pathToFileURL(join(plan.root, 'docs', 'service.md')).href)}`,
    ...why.map((line) => `# ${line}`),
    `Wants=${deps.join(' ')}`,
    `After=${deps.join(' ')}`,
    'StartLimitIntervalSec=120s',
    'StartLimitBurst=5',
  ]
}

const INSTALL = ['[Install]', 'WantedBy=multi-user.target']

function executorUnit(plan: ServicePlan, redis: string[]): string {
  const deps = ['network-online.target', 'docker.service', ...redis]
  return [
    HEADER,
    '',
    ...unitSection('initless executor: restores function snapshots into sandboxes', plan, deps, [
      'Wants, not Requires: restores need neither Docker (builds and bakes do) nor a connected Redis',
      '(the executor reconnects), and Requires would stop every instance at each restart of either.',
      'docker.service brings containerd with it.',
    ]),
    '',
    '[Service]',
    ...serviceCommon(plan, plan.executor),
    // Root with every capability: CRIU restores the capability sets recorded in a checkpoint and
    // cannot grant one outside its own bounding set, and it needs CAP_SYS_ADMIN, which a narrower
    // set would not contain anyway (docs/service.md lists what each part uses).
    'User=root',
    // The executor creates and removes cgroups for its sandboxes: systemd leaves its subtree alone.
    'Delegate=yes',
    // SIGTERM to the executor alone: it drains restores and stops its instances itself, through the
    // sandbox helpers and CRIU daemons it started. SIGKILL reaches what is left only after it exits.
    'KillMode=mixed',
    `TimeoutStopSec=${plan.executorStopSec}s`,
    // Per instance: output pipes, lazy-pages sockets, netns and cgroup handles.
    'LimitNOFILE=1048576',
    // CRIU creates the restored tasks in this unit's cgroup before moving them to the sandbox's.
    'TasksMax=infinity',
    '',
    ...INSTALL,
    '',
  ].join('\n')
}

function gatewayUnit(plan: ServicePlan, redis: string[]): string {
  const queue = plan.queueRedis.kind === 'system' ? [plan.queueRedis.unit] : []
  const deps = ['network-online.target', EXECUTOR_UNIT, ...redis, ...queue]
  const caps = [
    'CAP_DAC_READ_SEARCH',
    ...(plan.gatewayPort > 0 && plan.gatewayPort < 1024 ? ['CAP_NET_BIND_SERVICE'] : []),
  ]
  return [
    HEADER,
    '',
    ...unitSection('initless gateway: routes and proxies function requests', plan, deps, [
      'After the executor: systemd stops units in reverse order, so the gateway drains its requests',
      'before the executor stops the instances serving them. Wants, not Requires: a gateway outlives',
      "an executor restart (cold requests wait in the queue) and serves other hosts' executors too.",
    ]),
    '',
    '[Service]',
    ...serviceCommon(plan, plan.gateway),
    // It only reads the install (wherever it lives and whoever owns it: DAC_READ_SEARCH), talks TCP
    // and listens on INITLESS_GATEWAY_PORT (NET_BIND_SERVICE only for a port below 1024).
    'User=root',
    `CapabilityBoundingSet=${caps.join(' ')}`,
    'NoNewPrivileges=yes',
    `TimeoutStopSec=${plan.gatewayStopSec}s`,
    'LimitNOFILE=1048576',
    '',
    ...INSTALL,
    '',
  ].join('\n')
}

function redisUnit(redis: Extract<RedisPlan, { kind: 'own' }>): string {
  return [
    HEADER,
    '',
    '[Unit]',
    `Description=Redis for initless on 127.0.0.1:${redis.port}`,
    'After=network.target',
    '',
    '[Service]',
    // As provision.sh starts it, but in the foreground and reporting readiness to systemd.
    'Type=notify',
    `ExecStart=${execLine([
      redis.bin,
      '--port',
      String(redis.port),
      '--bind',
      '127.0.0.1',
      '--dir',
      redis.dir,
      '--appendonly',
      'yes',
      '--save',
      '',
      '--supervised',
      'systemd',
      '--daemonize',
      'no',
    ])}`,
    'Restart=on-failure',
    'LimitNOFILE=65535',
    '',
    ...INSTALL,
    '',
  ].join('\n')
}
