/**
 * One worker process of a multi-process gateway: its slots (worker-slots.ts) and its /metrics,
 * both over the IPC channel to the primary (primary.ts). startGateway takes it as `deps.worker`.
 */
import type { MetricsDump } from '../metrics.ts'
import type { SlotQuota } from '../slot-quota.ts'
import { isClusterMessage, type ToPrimaryMessage, type ToWorkerMessage } from './messages.ts'
import type { ToWorker } from './slot-ledger.ts'
import { createWorkerSlots } from './worker-slots.ts'

/** The worker's end of node:cluster's channel (`process` in a cluster worker). */
export interface IpcPort {
  send(message: ToPrimaryMessage): unknown
  on(event: 'message', listener: (message: unknown) => void): unknown
}

export interface GatewayWorker {
  readonly slots: SlotQuota
  /** `/metrics` over every worker, gathered by the primary. */
  renderMetrics(): Promise<string>
  /** Answer the primary's requests for this worker's metrics with `dump`. */
  serveMetrics(dump: () => Promise<MetricsDump>): void
  /** The worker listens on the port. */
  listening(): void
}

/** How long a worker waits for the primary to gather every worker's metrics (ms). */
const METRICS_TIMEOUT_MS = 5000

export function createGatewayWorker(ipc: IpcPort): GatewayWorker {
  const slotListeners: ((m: ToWorker) => void)[] = []
  const pending = new Map<number, { resolve(text: string): void; reject(err: Error): void }>()
  let dump: (() => Promise<MetricsDump>) | undefined
  let nextReq = 0

  ipc.on('message', (raw) => {
    if (!isClusterMessage(raw)) return
    const m = raw as ToWorkerMessage
    if (m.t === 'metrics-dump?') {
      void dump?.().then((d) => ipc.send({ t: 'metrics-dump', req: m.req, dump: d }))
    } else if (m.t === 'metrics-text') {
      const p = pending.get(m.req)
      pending.delete(m.req)
      if (m.text !== undefined) p?.resolve(m.text)
      else p?.reject(new Error(m.error ?? 'metrics not gathered'))
    } else for (const l of slotListeners) l(m)
  })

  return {
    slots: createWorkerSlots({
      send: (message) => ipc.send(message),
      onMessage: (listener) => slotListeners.push(listener),
    }),
    renderMetrics() {
      const req = ++nextReq
      return new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(req)
          reject(new Error('the gateway primary did not gather the metrics in time'))
        }, METRICS_TIMEOUT_MS)
        pending.set(req, {
          resolve: (text) => (clearTimeout(timer), resolve(text)),
          reject: (err) => (clearTimeout(timer), reject(err)),
        })
        ipc.send({ t: 'metrics?', req })
      })
    },
    serveMetrics(d) {
      dump = d
    },
    listening() {
      ipc.send({ t: 'listening' })
    },
  }
}
