/**
 * Prometheus metrics of one gateway app, on a registry of its own (never prom-client's global
 * default, so two apps in one process — as in tests — do not collide).
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { ColdStartPhases } from '../shared/contracts.ts'
import type { DeathCount } from '../shared/instance-deaths.ts'
import type { PoolStats } from './pool-state.ts'

/** How a request found its instance: restored for it, running, thawed from standby, or none. */
export type StartKind = 'cold' | 'warm' | 'thawed' | 'none'

export interface GatewayMetrics {
  readonly registry: Registry
  /** One finished request to a function. `none`: it never got an instance. */
  invocation(fn: string, status: number, start: StartKind): void
  upstream(fn: string, ms: number): void
  waited(fn: string, start: StartKind, ms: number): void
  coldStart(fn: string, phases: ColdStartPhases): void
  /** A deploy or rollback ended: its status (`deployed`, `unchanged`, ...), or `failed:<step>`. */
  lifecycle(fn: string, outcome: string): void
}

const PHASES = ['queueMs', 'sandboxMs', 'restoreMs', 'readyMs'] as const

export function createGatewayMetrics(deps: {
  readonly stats: () => readonly PoolStats[]
  /** Also export process metrics (CPU, memory, event loop): the composition root turns this on. */
  readonly processMetrics?: boolean
  /** The active version of every deployed function (the function registry), when followed. */
  readonly activeVersions?: () => readonly { readonly fn: string; readonly version: string }[]
  /** Instance deaths by function and reason, all hosts together (shared/instance-deaths.ts). */
  readonly deathCounts?: () => Promise<readonly DeathCount[]>
}): GatewayMetrics {
  const registry = new Registry()
  if (deps.processMetrics) collectDefaultMetrics({ register: registry })
  const latency = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
  const invocations = new Counter({
    name: 'initless_gateway_invocations_total',
    help: 'Requests to functions, by HTTP status and whether they hit a cold or warm instance',
    labelNames: ['function', 'status', 'start'] as const,
    registers: [registry],
  })
  const upstream = new Histogram({
    name: 'initless_gateway_upstream_seconds',
    help: 'Time from sending a request to an instance to its response headers',
    labelNames: ['function'] as const,
    buckets: latency,
    registers: [registry],
  })
  const waited = new Histogram({
    name: 'initless_gateway_wait_seconds',
    help: 'Time requests waited in the gateway for an instance slot',
    labelNames: ['function', 'start'] as const,
    buckets: latency,
    registers: [registry],
  })
  const phases = new Histogram({
    name: 'initless_gateway_cold_start_phase_seconds',
    help: 'Cold-start phases of instances this gateway asked for (queue, sandbox, restore, ready)',
    labelNames: ['function', 'phase'] as const,
    buckets: latency,
    registers: [registry],
  })
  new Gauge({
    name: 'initless_gateway_queue_depth',
    help: 'Requests waiting for an instance slot',
    labelNames: ['function'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const s of deps.stats()) this.set({ function: s.fn }, s.waiting)
    },
  })
  new Gauge({
    name: 'initless_gateway_instances',
    help: 'Instances as this gateway sees them, by state',
    labelNames: ['function', 'state'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const s of deps.stats()) {
        this.set({ function: s.fn, state: 'ready' }, s.ready)
        this.set({ function: s.fn, state: 'starting' }, s.starting)
        this.set({ function: s.fn, state: 'frozen' }, s.frozen)
      }
    },
  })
  new Gauge({
    name: 'initless_gateway_standby_memory_bytes',
    help: "Memory the function's frozen standby instances hold (their cgroups' when frozen)",
    labelNames: ['function'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const s of deps.stats()) if (s.frozen) this.set({ function: s.fn }, s.frozenMemoryBytes)
    },
  })
  new Gauge({
    name: 'initless_gateway_inflight_requests',
    help: 'Requests this gateway has in flight on instances',
    labelNames: ['function'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const s of deps.stats()) this.set({ function: s.fn }, s.inflight)
    },
  })
  new Gauge({
    name: 'initless_gateway_scaling_estimate_seconds',
    help: 'Moving averages the scale-up rule uses: restore (enqueue to ready) and service (a request holding a slot)',
    labelNames: ['function', 'estimate'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const s of deps.stats()) {
        if (s.restoreMs !== undefined) this.set({ function: s.fn, estimate: 'restore' }, s.restoreMs / 1000)
        if (s.serviceMs !== undefined) this.set({ function: s.fn, estimate: 'service' }, s.serviceMs / 1000)
      }
    },
  })
  const lifecycle = new Counter({
    name: 'initless_gateway_lifecycle_total',
    help: 'Deploys and rollbacks through this gateway, by outcome (deployed, unchanged, updated, activated, rolled-back, deleted, failed:<step>)',
    labelNames: ['function', 'outcome'] as const,
    registers: [registry],
  })
  new Gauge({
    name: 'initless_function_active_version_info',
    help: 'The active version of each deployed function (value 1), as this gateway follows the function registry',
    labelNames: ['function', 'version'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const a of deps.activeVersions?.() ?? []) this.set({ function: a.fn, version: a.version }, 1)
    },
  })
  new Gauge({
    name: 'initless_instance_deaths_total',
    help: 'Instances that died or were recycled, by reason (oom-killed, pids-limit, disk-full, request-timeout, exited), all hosts together, as recorded in Redis',
    labelNames: ['function', 'reason'] as const,
    registers: [registry],
    async collect() {
      this.reset()
      const counts = await deps.deathCounts?.().catch(() => [])
      for (const c of counts ?? []) this.set({ function: c.fn, reason: c.reason }, c.count)
    },
  })
  return {
    registry,
    lifecycle: (fn, outcome) => lifecycle.inc({ function: fn, outcome }),
    invocation: (fn, status, start) => invocations.inc({ function: fn, status: String(status), start }),
    upstream: (fn, ms) => upstream.observe({ function: fn }, ms / 1000),
    waited: (fn, start, ms) => waited.observe({ function: fn, start }, ms / 1000),
    coldStart(fn, p) {
      for (const phase of PHASES) phases.observe({ function: fn, phase: phase.slice(0, -2) }, p[phase] / 1000)
    },
  }
}
