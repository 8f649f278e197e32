/**
 * Slowloris: what 500 connections that send their headers a line at a time cost the requests of
 * everyone else. A gateway is started in this process exactly as gateway/main.ts starts it (real
 * Redis and BullMQ, the configured listener and client guard, default timeouts), and the latency of
 * sequential `GET /healthz` requests (the whole HTTP stack: guard, parser, hono) is measured on a
 * fresh connection each, first with nothing else going on, then while the slow connections are
 * held open from four loopback addresses (under the per-address cap, as a spread-out attack would
 * be) and trickle a header line every second. Results go to bench/results/slowloris-<date>.json.
 *
 *   node --import tsx bench/slowloris.ts [--connections 500] [--requests 300]
 */
import { randomUUID } from 'node:crypto'
import { mkdir, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { connect, type Socket } from 'node:net'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createStaticCatalog } from '../gateway/catalog.ts'
import { loadGatewayConfig } from '../gateway/config.ts'
import { createNodeForwarder } from '../gateway/node-forwarder.ts'
import { startGateway } from '../gateway/start.ts'
import { createUpstreamAgents } from '../gateway/upstream-agents.ts'
import { createBullmqRestoreQueue } from '../shared/bullmq-restore-queue.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { createRedis, deleteKeys } from '../shared/redis.ts'
import { benchEnvironment, percentile, round } from './env.ts'

const { values } = parseArgs({
  options: {
    connections: { type: 'string', default: '500' },
    requests: { type: 'string', default: '300' },
    out: { type: 'string', default: join(import.meta.dirname, 'results') },
  },
})
const CONNECTIONS = Number(values.connections)
const REQUESTS = Number(values.requests)
const REDIS_URL = process.env.INITLESS_REDIS_URL ?? 'redis://127.0.0.1:6379'

function timedGet(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now()
    const req = request({ host: '127.0.0.1', port, path: '/healthz', agent: false }, (res) => {
      res.resume()
      res.on('end', () =>
        res.statusCode === 200
          ? resolve(performance.now() - t0)
          : reject(new Error(`status ${res.statusCode}`)),
      )
    })
    req.on('error', reject)
    req.end()
  })
}

async function series(
  port: number,
): Promise<{ p50Ms: number; p95Ms: number; p99Ms: number; maxMs: number; failed: number }> {
  const ms: number[] = []
  let failed = 0
  for (let i = 0; i < REQUESTS; i++)
    await timedGet(port).then(
      (t) => ms.push(t),
      () => failed++,
    )
  return {
    p50Ms: round(percentile(ms, 50), 2),
    p95Ms: round(percentile(ms, 95), 2),
    p99Ms: round(percentile(ms, 99), 2),
    maxMs: round(Math.max(...ms), 2),
    failed,
  }
}

const id = randomUUID()
const prefix = `bench-slowloris-${id}`
const logger = createSilentLogger()
const config = loadGatewayConfig({
  INITLESS_REDIS_URL: REDIS_URL,
  INITLESS_KEY_PREFIX: prefix,
  INITLESS_QUEUE_NAME: prefix,
  INITLESS_GATEWAY_HOST: '127.0.0.1',
  INITLESS_GATEWAY_PORT: '0',
  INITLESS_SHUTDOWN_TIMEOUT: '1s',
})
const redis = createRedis(REDIS_URL, { name: 'bench-slowloris' })
const agents = createUpstreamAgents()
const gateway = await startGateway(config, {
  logger,
  redis,
  queue: createBullmqRestoreQueue({ redisUrl: REDIS_URL, logger, queueName: prefix }),
  forwarder: createNodeForwarder({ agents, logger }),
  closeUpstream: () => agents.close(),
  catalog: createStaticCatalog([]),
})
const port = gateway.address.port

await series(port) // warm-up: JIT, connection paths
const quiet = await series(port)

const sockets: Socket[] = []
const opened = await Promise.all(
  Array.from(
    { length: CONNECTIONS },
    (_, i) =>
      new Promise<boolean>((resolve) => {
        const s = connect({ port, host: '127.0.0.1', localAddress: `127.0.0.${20 + (i % 4)}` }, () => {
          s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n')
          resolve(true)
        })
        s.on('error', () => resolve(false))
        sockets.push(s)
      }),
  ),
)
const trickle = setInterval(() => {
  for (const s of sockets) if (!s.destroyed) s.write('X-Slow: 1\r\n')
}, 1000)
const t0 = performance.now()
const attacked = await series(port)
const held = sockets.filter((s) => !s.destroyed).length
const windowMs = performance.now() - t0
clearInterval(trickle)
for (const s of sockets) s.destroy()

await gateway.close()
redis.disconnect()
const cleanup = createRedis(REDIS_URL, { name: 'bench-slowloris-cleanup' })
await deleteKeys(cleanup, [`${prefix}:*`, `bull:${prefix}:*`])
cleanup.disconnect()

const result = {
  ...benchEnvironment(process.argv),
  slowloris: {
    connections: CONNECTIONS,
    opened: opened.filter(Boolean).length,
    heldAtEnd: held,
    windowMs: Math.round(windowMs),
    headersTimeoutMs: config.INITLESS_HEADERS_TIMEOUT,
    requests: REQUESTS,
    quiet,
    attacked,
    addedP50Ms: round(attacked.p50Ms - quiet.p50Ms, 2),
    addedP99Ms: round(attacked.p99Ms - quiet.p99Ms, 2),
  },
}
await mkdir(values.out, { recursive: true })
const file = join(values.out, `slowloris-${result.date.replace(/[:.]/g, '-')}.json`)
await writeFile(file, `${JSON.stringify(result, null, 2)}\n`)
console.log(
  [
    `GET /healthz, ${REQUESTS} sequential requests, a new connection each`,
    `quiet:    p50 ${quiet.p50Ms} ms  p95 ${quiet.p95Ms}  p99 ${quiet.p99Ms}  max ${quiet.maxMs}  failed ${quiet.failed}`,
    `attacked: p50 ${attacked.p50Ms} ms  p95 ${attacked.p95Ms}  p99 ${attacked.p99Ms}  max ${attacked.maxMs}  failed ${attacked.failed}`,
    `(${result.slowloris.opened} slowloris connections opened, ${held} still held after the ${Math.round(windowMs)} ms window)`,
    `written to ${file}`,
  ].join('\n'),
)
