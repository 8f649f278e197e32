/**
 * `initless up` (build, bake and serve: the product command), `invoke`, `logs`, `hosts` and `scale`.
 */
import { randomBytes } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Command } from 'commander'
import { loadExecutorConfig, type ExecutorConfig } from '../executor/config.ts'
import { desiredPeerRoutes, networkIdentity, ROUTE_PROTO } from '../executor/cluster/peers.ts'
import { lockStateDir } from '../executor/cluster/state-lock.ts'
import { createBullmqRestoreQueue } from '../shared/bullmq-restore-queue.ts'
import { EXECUTOR_FRESH_MS, HOST_GONE_MS } from '../shared/contracts.ts'
import { InitlessError } from '../shared/errors.ts'
import { activeVersion, createRedisFunctionRegistry } from '../shared/function-registry.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { createRedis } from '../shared/redis.ts'
import { createRedisRegistry } from '../shared/registry.ts'
import { createRestoreClient } from '../shared/restore-client.ts'
import { formatAge } from '../shared/units.ts'
import { gatewayUrl as launcherGatewayUrl, startStack } from './launcher.ts'
import { checkQueueRedis } from './queue-redis-probe.ts'
import type { CliIo } from './progress.ts'

const gatewayUrl = () => launcherGatewayUrl(process.env)

export function registerServeCommands(program: Command, io: CliIo): void {
  program
    .command('up')
    .description('run the executor and the gateway, deploy every function folder, serve until Ctrl-C')
    .action(async () => {
      // Refuse at once when an executor already serves this state dir (ERR_STATE_DIR_IN_USE names it).
      const config = loadExecutorConfig(process.env)
      await (
        await lockStateDir(config.INITLESS_STATE_DIR, { hostId: `${config.hostId} (initless up)` })
      ).release()
      // The invocation queues go to the provisioned queue Redis (appendfsync always) unless told.
      const queue = await checkQueueRedis(process.env)
      for (const line of queue.lines) io.progress(line)
      let stopping = false
      let stopStack: (() => Promise<unknown>) | undefined
      const stop = async (code: number) => {
        if (stopping) return
        stopping = true
        io.progress('stopping initless…')
        await stopStack?.()
        process.exit(code)
      }
      process.on('SIGINT', () => void stop(0))
      process.on('SIGTERM', () => void stop(0))
      // The deploys go through the admin API: without a token of the operator's, one for this run.
      const adminToken = process.env.INITLESS_ADMIN_TOKEN || randomBytes(24).toString('hex')
      const url = gatewayUrl()
      const stack = await startStack({
        url,
        env: { INITLESS_ADMIN_TOKEN: adminToken, ...queue.env },
        adminToken,
        keepOutput: false,
        onLine: (name, line) => io.progress(`[${name}] ${line}`),
        onDeploy: (line) => io.progress(line),
        allowDeployFailures: true,
        readyTimeoutMs: 120_000,
        defer: (stopIt) => (stopStack = stopIt),
      })
      for (const p of [stack.executor, stack.gateway])
        void p.exited().then((exit) => !stopping && void stop(exit.code ?? 1))
      const names = (
        await stack.admin<{ functions: { name: string }[] }>('GET', '/functions')
      ).body.functions.map((f) => f.name)
      io.print(
        { url, functions: names },
        [
          `initless is up at ${url}`,
          ...names.map((n) => `  ${url}/fn/${n}/`),
          ...(process.env.INITLESS_ADMIN_TOKEN ? [] : [`admin token of this run: ${adminToken}`]),
          'Ctrl-C stops everything.',
        ].join('\n'),
      )
    })

  program
    .command('invoke <fn> [path]')
    .description('call a function through the gateway; prints status, body and cold-start phases')
    .option('-d, --data <body>', 'request body (sent as POST unless --method is given)')
    .option('-X, --method <method>', 'HTTP method')
    .option('-H, --header <header...>', "extra header, 'Name: value'")
    .option('--async', 'hand it over asynchronously: prints the invocation id (GET /invocations/<id>)')
    .action(
      async (
        fn: string,
        path: string | undefined,
        opts: { data?: string; method?: string; header?: string[]; async?: boolean },
      ) => {
        const lane = opts.async ? 'async-function' : 'fn'
        const url = `${gatewayUrl()}/${lane}/${encodeURIComponent(fn)}${path ? (path.startsWith('/') ? path : `/${path}`) : '/'}`
        const headers: Record<string, string> = {}
        for (const h of opts.header ?? []) {
          const i = h.indexOf(':')
          if (i > 0) headers[h.slice(0, i).trim()] = h.slice(i + 1).trim()
        }
        const started = performance.now()
        const res = await fetch(url, {
          method: opts.method ?? (opts.data === undefined ? 'GET' : 'POST'),
          headers,
          ...(opts.data === undefined ? {} : { body: opts.data }),
        })
        const body = await res.text()
        const ms = performance.now() - started
        if (opts.async && res.status === 202) {
          const id = res.headers.get('x-invocation-id') ?? ''
          io.print({ status: res.status, id, location: res.headers.get('location') }, `accepted: ${id}`)
          return
        }
        const timing = parseServerTiming(res.headers.get('server-timing') ?? '')
        io.print(
          {
            status: res.status,
            body,
            ms: Math.round(ms),
            serverTiming: timing,
            headers: Object.fromEntries(res.headers),
          },
          [
            `HTTP ${res.status} in ${Math.round(ms)} ms`,
            ...(timing.length
              ? [
                  `phases: ${timing.map((t) => (t.dur === undefined ? t.name : `${t.name}=${t.dur}ms`)).join(' ')}`,
                ]
              : []),
            '',
            body,
          ].join('\n'),
        )
        if (res.status >= 400) process.exitCode = 1
      },
    )

  program
    .command('logs <fn>')
    .description("print the output of a function's instances on this host")
    .option('-n, --lines <n>', 'lines per instance', '100')
    .action(async (fn: string, opts: { lines: string }) => {
      const config = loadExecutorConfig(process.env)
      const dir = join(config.INITLESS_STATE_DIR, 'instances')
      const out: { instance: string; output: string }[] = []
      for (const name of (await readdir(dir).catch(() => [] as string[])).sort()) {
        const meta = await readFile(join(dir, name, 'sandbox.json'), 'utf8').then(
          (t) => JSON.parse(t) as { fn: string },
          () => undefined,
        )
        if (meta?.fn !== fn) continue
        const text = await readFile(join(dir, name, 'output.log'), 'utf8').catch(() => '')
        out.push({ instance: name, output: text.trimEnd().split('\n').slice(-Number(opts.lines)).join('\n') })
      }
      io.print(
        out,
        out.length
          ? out.map((o) => `==> ${o.instance}\n${o.output}`).join('\n')
          : `no instances of ${fn} on this host`,
      )
    })

  program
    .command('hosts')
    .description('the executors sharing this Redis: subnet, advertised address, last heartbeat, routes')
    .action(async () => {
      const config = loadExecutorConfig(process.env)
      const { redis, registry } = openRegistry(config)
      try {
        const now = Date.now()
        const hosts = (await registry.executors())
          .sort((a, b) => a.hostId.localeCompare(b.hostId))
          .map((h) => ({ ...h, ageMs: Math.max(0, now - h.at), state: hostState(now - h.at) }))
        // A host with only a gateway has no subnet of its own: it needs a route to every subnet.
        const own = hosts.find((h) => h.hostId === config.hostId)?.subnet
        const routes = desiredPeerRoutes(
          { hostId: config.hostId, subnet: own, network: await networkIdentity() },
          hosts,
          now,
        )
        const rows = hosts.map((h) => [
          h.hostId === config.hostId ? `${h.hostId} (this host)` : h.hostId,
          h.state,
          formatAge(h.ageMs),
          h.subnet ?? '-',
          h.address ?? '-',
          String(h.functions.length),
        ])
        io.print(
          { hosts, routes },
          hosts.length
            ? [
                table(['host', 'state', 'heard', 'subnet', 'address', 'functions'], rows),
                '',
                routes.length
                  ? `routes a host without an executor needs (executors keep their own):\n${routes
                      .map((r) => `  ip route replace ${r.subnet} via ${r.via} proto ${ROUTE_PROTO}`)
                      .join('\n')}`
                  : 'no host advertises an address: nothing to route',
              ].join('\n')
            : 'no executor has ever sent a heartbeat to this Redis',
        )
      } finally {
        redis.disconnect()
      }
    })

  program
    .command('scale <fn> <instances>')
    .description('0: scale the function to zero now; N: pre-warm N more instances')
    .action(async (fnName: string, n: string) => {
      const count = Number(n)
      if (!Number.isInteger(count) || count < 0 || count > 1000)
        throw new InitlessError(
          'ERR_CONFIG_INVALID',
          `instances must be a whole number from 0 to 1000, got '${n}'`,
        )
      const config = loadExecutorConfig(process.env)
      const { redis, registry } = openRegistry(config)
      try {
        // The running stack's function registry, not a folder: a function deployed from elsewhere
        // scales too, with the active version's maxInstances.
        const deployed = createRedisFunctionRegistry({
          redis,
          logger: createSilentLogger(),
          prefix: config.INITLESS_KEY_PREFIX,
        })
        const fn = activeVersion(await deployed.get(fnName))
        if (!fn) {
          const known = (await deployed.list()).filter((r) => r.active).map((r) => r.name)
          throw new InitlessError(
            'ERR_FUNCTION_NOT_FOUND',
            `no deployed function '${fnName}' (deployed: ${known.join(', ') || 'none'})`,
          )
        }
        if (count === 0) {
          await registry.publish({ type: 'function', fn: fnName, action: 'scale-to-zero' })
          io.print({ fn: fnName, action: 'scale-to-zero' }, `${fnName}: scale to zero requested`)
          return
        }
        const queue = createBullmqRestoreQueue({
          redisUrl: config.INITLESS_REDIS_URL,
          logger: createSilentLogger(),
          queueName: config.INITLESS_QUEUE_NAME,
        })
        const restores = createRestoreClient({ registry, queue })
        const started: string[] = []
        try {
          for (let i = 0; i < count; i++) {
            const id = await restores.start({
              fn: fnName,
              maxInstances: fn.manifest.scaling.maxInstances,
              reason: 'prewarm',
            })
            if (!id) break
            started.push(id)
          }
        } finally {
          await queue.close()
        }
        io.print(
          { fn: fnName, prewarming: started },
          `${fnName}: pre-warming ${started.length} instance(s)${started.length < count ? ` (maxInstances ${fn.manifest.scaling.maxInstances} reached)` : ''}`,
        )
      } finally {
        redis.disconnect()
      }
    })
}

/** live: counted by gateways and for the subnet claim; silent: kept (routes, records); gone. */
function hostState(ageMs: number): 'live' | 'silent' | 'gone' {
  return ageMs <= EXECUTOR_FRESH_MS ? 'live' : ageMs <= HOST_GONE_MS ? 'silent' : 'gone'
}

/** Columns padded to their widest cell. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  return [header, ...rows]
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n')
}

/** The registry of the configured Redis and key prefix; the caller disconnects `redis`. */
function openRegistry(config: Pick<ExecutorConfig, 'INITLESS_REDIS_URL' | 'INITLESS_KEY_PREFIX'>) {
  const redis = createRedis(config.INITLESS_REDIS_URL, { name: 'initless-cli' })
  const registry = createRedisRegistry({
    redis,
    logger: createSilentLogger(),
    prefix: config.INITLESS_KEY_PREFIX,
  })
  return { redis, registry }
}

export function parseServerTiming(header: string): { name: string; dur?: number; desc?: string }[] {
  return header
    .split(',')
    .map((part) => part.trim())
    .filter(Boolean)
    .map((part) => {
      const [name = '', ...params] = part.split(';').map((s) => s.trim())
      const entry: { name: string; dur?: number; desc?: string } = { name }
      for (const p of params) {
        const [k, v = ''] = p.split('=')
        if (k === 'dur') entry.dur = Number(v)
        if (k === 'desc') entry.desc = v.replace(/^"|"$/g, '')
      }
      return entry
    })
}
