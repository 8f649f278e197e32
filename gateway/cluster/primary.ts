/**
 * The primary of a multi-process gateway (INITLESS_GATEWAY_WORKERS > 1): it forks the workers
 * (each a whole gateway: startGateway on the shared port, its own Redis connections, registry
 * followers and async workers, as several gateways sharing one Redis already are), owns the slot
 * ledger that keeps every instance's concurrency exact across them, answers their /metrics with the
 * sum over all workers, replaces a worker that died (its slots are released at once) and, on
 * close(), lets every worker drain. It serves no request itself: node:cluster hands each accepted
 * connection to a worker.
 */
import type { Worker } from 'node:cluster'
import type { Logger } from 'pino'
import { aggregateMetrics, type MetricsDump } from '../metrics.ts'
import { createSlotLedger, type Outgoing } from './slot-ledger.ts'
import { isClusterMessage, type ToPrimaryMessage, type ToWorkerMessage } from './messages.ts'

/** The part of node:cluster the primary uses (a fake in tests). */
export interface ClusterPort {
  fork(env: Record<string, string>): Worker
  on(event: 'exit', listener: (worker: Worker, code: number | null, signal: string | null) => void): void
}

export interface GatewayPrimary {
  /** SIGTERM every worker (each drains) and wait for them; true when all exited 0. Idempotent. */
  close(deadlineMs: number): Promise<boolean>
}

/** A worker that dies within this long of its start is replaced only after a pause (crash loop). */
const RESTART_PAUSE_MS = 1000

export function startGatewayPrimary(deps: {
  readonly cluster: ClusterPort
  readonly workers: number
  readonly logger: Logger
}): GatewayPrimary {
  const log = deps.logger.child({ module: 'primary' })
  const ledger = createSlotLedger({ workers: deps.workers })
  const live = new Map<number, Worker>()
  const startedAt = new Map<number, number>()
  let closing: Promise<boolean> | undefined
  let nextDump = 0
  /** Metrics requests being gathered: id -> dumps still expected and the asking worker. */
  const gathering = new Map<
    number,
    { from: number; fromReq: number; dumps: MetricsDump[]; expected: Set<number> }
  >()

  const send = (worker: number, message: ToWorkerMessage) => {
    const w = live.get(worker)
    if (w?.isConnected()) w.send(message)
  }
  const deliver = (out: readonly Outgoing[]) => {
    for (const o of out) send(o.worker, o.message)
  }

  const finishDump = (id: number) => {
    const g = gathering.get(id)
    if (!g || g.expected.size) return
    gathering.delete(id)
    aggregateMetrics(g.dumps).then(
      (text) => send(g.from, { t: 'metrics-text', req: g.fromReq, text }),
      (err: unknown) => send(g.from, { t: 'metrics-text', req: g.fromReq, error: String(err) }),
    )
  }

  const onMessage = (worker: number, m: ToPrimaryMessage) => {
    if (m.t === 'metrics?') {
      const id = ++nextDump
      gathering.set(id, { from: worker, fromReq: m.req, dumps: [], expected: new Set(live.keys()) })
      for (const w of live.keys()) send(w, { t: 'metrics-dump?', req: id })
    } else if (m.t === 'metrics-dump') {
      const g = gathering.get(m.req)
      if (!g) return
      g.dumps.push(m.dump)
      g.expected.delete(worker)
      finishDump(m.req)
    } else if (m.t === 'listening') {
      listening.add(worker)
    } else deliver(ledger.receive(worker, m))
  }

  /** Workers serving (a worker still starting has nothing to drain at shutdown). */
  const listening = new Set<number>()

  const fork = () => {
    const w = deps.cluster.fork({})
    startedAt.set(w.id, Date.now())
    live.set(w.id, w)
    w.on('message', (m: unknown) => {
      if (isClusterMessage(m)) onMessage(w.id, m as ToPrimaryMessage)
    })
    log.info({ worker: w.id, pid: w.process.pid }, 'gateway worker started')
  }

  deps.cluster.on('exit', (w, code, signal) => {
    if (!live.has(w.id)) return
    live.delete(w.id)
    listening.delete(w.id)
    // Its connections died with it: so did its requests, and its slots are free again.
    deliver(ledger.workerGone(w.id))
    for (const [id, g] of gathering) if (g.expected.delete(w.id)) finishDump(id)
    if (closing) return
    log.error({ worker: w.id, code, signal }, 'gateway worker died; starting another')
    const lived = Date.now() - (startedAt.get(w.id) ?? 0)
    startedAt.delete(w.id)
    setTimeout(() => !closing && fork(), lived < RESTART_PAUSE_MS ? RESTART_PAUSE_MS : 0)
  })

  for (let i = 0; i < deps.workers; i++) fork()

  return {
    close(deadlineMs) {
      closing ??= new Promise<boolean>((resolve) => {
        let isClean = true
        const workers = [...live.values()]
        if (!workers.length) return resolve(true)
        let left = workers.length
        const timer = setTimeout(() => {
          log.error({ left }, 'gateway workers did not stop in time; killing them')
          for (const w of live.values()) w.process.kill('SIGKILL')
          resolve(false)
        }, deadlineMs)
        for (const w of workers) {
          // A worker still starting has no requests to drain: SIGTERM ends it before its handlers.
          const isServing = listening.has(w.id)
          w.once('exit', (code: number | null) => {
            if (code !== 0 && isServing) isClean = false
            if (--left === 0) {
              clearTimeout(timer)
              resolve(isClean)
            }
          })
          w.process.kill('SIGTERM')
        }
      })
      return closing
    },
  }
}
