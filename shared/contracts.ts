/**
 * Contracts between the gateway and the executor: queue names, job payloads and results, the
 * Redis key layout and pub/sub events. Both sides import these; nothing here does I/O.
 */

/** BullMQ queue the gateway enqueues restores on and the executors consume. */
export const RESTORE_QUEUE = 'initless-restore'

/** How an instance is started. `docker` is Docker's checkpoint API, kept as a benchmark reference. */
export const RUNTIME_KINDS = ['lazy', 'eager', 'boot', 'docker'] as const
export type RuntimeKind = (typeof RUNTIME_KINDS)[number]

export type RestoreReason = 'demand' | 'prewarm' | 'min-instances' | 'standby' | 'bench'

/**
 * How a restore runs, when not as the function's restore policy and pool decide (benchmarks,
 * diagnostics, tests). Carried in the job.
 */
export interface RestoreJobOptions {
  /** Forces a runtime instead of the function's restore policy. */
  readonly runtime?: RuntimeKind
  /** Skip the pre-started pool (benchmarks measure both). */
  readonly noPool?: boolean
}

/** Payload of a restore job. The job id is the instance id the producer reserved. */
export interface RestoreJobData extends RestoreJobOptions {
  readonly fn: string
  /** Instance id reserved in the registry before enqueueing (state `starting`). */
  readonly instanceId: string
  /** Correlates gateway request logs with executor logs. */
  readonly traceId: string
  /** Epoch ms when the gateway enqueued the job: the queue-wait phase starts here. */
  readonly enqueuedAt: number
  readonly reason: RestoreReason
}

/** How a restore job ended for good when it failed: the executor's error, as the producer sees it. */
export interface RestoreFailure {
  /** A code of the catalogue in shared/errors.ts (ERR_*). */
  readonly code: string
  readonly message: string
  /** Whether another restore may succeed (false: a bad manifest, a missing function). */
  readonly retryable: boolean
}

/** Marks a failed job's reason as a RestoreFailure (BullMQ carries a failure as one string). */
const FAILURE_TAG = 'initless-restore-failure'

/** The failed job's reason that carries `failure`. */
export function encodeRestoreFailure(failure: RestoreFailure): string {
  return JSON.stringify({ [FAILURE_TAG]: 1, ...failure })
}

/**
 * The RestoreFailure a failed job's reason carries. A reason that carries none (BullMQ's own, such
 * as a job that stalled too often) is a retryable ERR_RESTORE_FAILED with the reason as message.
 */
export function decodeRestoreFailure(reason: string): RestoreFailure {
  try {
    const v = JSON.parse(reason) as Record<string, unknown>
    if (
      v?.[FAILURE_TAG] === 1 &&
      typeof v.code === 'string' &&
      typeof v.message === 'string' &&
      typeof v.retryable === 'boolean'
    )
      return { code: v.code, message: v.message, retryable: v.retryable }
  } catch {
    // not an envelope
  }
  return { code: 'ERR_RESTORE_FAILED', message: reason, retryable: true }
}

/** Durations of each phase of a cold start, in milliseconds. */
export interface ColdStartPhases {
  /** Enqueue -> a worker picked the job up. */
  readonly queueMs: number
  /** Network namespace, rootfs, cgroup and work dir ready (0 when taken from the pool). */
  readonly sandboxMs: number
  /** The restore (CRIU, or runc on cgroup v2 hosts) or the container start returned. */
  readonly restoreMs: number
  /**
   * Of restoreMs, the time CRIU ran: the `criu restore` process from start to exit (or, under
   * runc, CRIU's own log). The rest is the executor's (and runc's) work around it.
   */
  readonly criuMs?: number
  /**
   * Reading the function's secrets from Redis and writing them for the instance (functions that
   * declare secrets only): the read precedes sandboxMs, the writing is part of restoreMs.
   */
  readonly secretsMs?: number
  /** Restore returned -> the readiness probe answered. */
  readonly readyMs: number
}

export interface InstanceAddress {
  readonly host: string
  readonly port: number
}

/** Result of a restore job: where the new instance answers, and what its start cost. */
export interface RestoreJobResult {
  readonly instanceId: string
  readonly fn: string
  readonly address: InstanceAddress
  readonly hostId: string
  readonly runtime: RuntimeKind
  readonly pooled: boolean
  readonly phases: ColdStartPhases
  /** Snapshot size in bytes (0 for boot). */
  readonly snapshotBytes: number
}

/**
 * `frozen`: a standby instance (`scaling.standby`), restored ahead of demand and held in the cgroup
 * freezer; without an address it is still being restored. A gateway claims it (frozen -> ready, the
 * event asks its executor to thaw it); until then it takes no requests.
 */
export const INSTANCE_STATES = ['starting', 'ready', 'draining', 'frozen'] as const
export type InstanceState = (typeof INSTANCE_STATES)[number]

/** One instance as the registry holds it. */
export interface InstanceRecord {
  readonly id: string
  readonly fn: string
  readonly state: InstanceState
  /** Executor host that owns the instance. */
  readonly hostId: string
  /** Set once the instance is ready. */
  readonly address?: InstanceAddress
  readonly runtime?: RuntimeKind
  /** Epoch ms. */
  readonly createdAt: number
  readonly readyAt?: number
  readonly phases?: ColdStartPhases
  /**
   * The function version it runs (shared/function-registry.ts), set when it became ready. Absent
   * for functions served without the registry (static function lists in tests).
   */
  readonly version?: string
  /** A standby instance: the cgroup's memory when it was frozen (bytes). */
  readonly memoryBytes?: number
  /** Epoch ms: when a standby instance was frozen, and when a gateway claimed (thawed) it. */
  readonly frozenAt?: number
  readonly thawedAt?: number
}

/** Events published on {@link EVENTS_CHANNEL} whenever the registry changes. */
export type RegistryEvent =
  | {
      readonly type: 'instance'
      readonly fn: string
      readonly id: string
      readonly state: InstanceState | 'gone'
      /** `ready` and `frozen` events carry the record as written: subscribers need not read it back. */
      readonly record?: InstanceRecord
    }
  | { readonly type: 'function'; readonly fn: string; readonly action: 'scale-to-zero' | 'rebake' }

export const KEY_PREFIX = 'initless'
export const EVENTS_CHANNEL = `${KEY_PREFIX}:events`
/** The function registry's changes (FunctionEvent), apart from the busier instance events. */
export const FUNCTION_EVENTS_CHANNEL = `${KEY_PREFIX}:function-events`

/** Redis key layout. One place, so a key never drifts between producer and consumer. */
export const keys = {
  /** HASH instanceId -> JSON InstanceRecord, per function. */
  instances: (fn: string) => `${KEY_PREFIX}:instances:${fn}`,
  /** HASH instanceId -> epoch ms of the last request routed to it. */
  lastUse: (fn: string) => `${KEY_PREFIX}:lastuse:${fn}`,
  /** HASH instanceId -> requests in flight, summed over gateways. */
  inflight: (fn: string) => `${KEY_PREFIX}:inflight:${fn}`,
  /** SET of function names that have (or had) instances: lets the reaper find every hash. */
  functions: () => `${KEY_PREFIX}:functions`,
  /** HASH hostId -> JSON ExecutorHeartbeat. */
  executors: () => `${KEY_PREFIX}:executors`,
  /** HASH fn -> JSON ScalingEstimates: the scale-up rule's learnt times, shared by gateways. */
  scaling: () => `${KEY_PREFIX}:scaling`,
  /** STRING: set while a re-bake of fn is requested. */
  rebake: (fn: string) => `${KEY_PREFIX}:rebake:${fn}`,
  /** SET of deployed function names (the function registry). */
  deployed: () => `${KEY_PREFIX}:deployed`,
  /** HASH `active` -> version id, `activatedAt`, `v:<version>` -> JSON FunctionVersion. */
  deployment: (fn: string) => `${KEY_PREFIX}:deployment:${fn}`,
  /** STRING: the build context (tar) of one version. */
  context: (fn: string, version: string) => `${KEY_PREFIX}:context:${fn}:${version}`,
  /** STRING with a TTL: who holds the function's change lock (a deploy or a rollback running). */
  changeLock: (fn: string) => `${KEY_PREFIX}:changelock:${fn}`,
  /** HASH secret name -> JSON stored secret (secret-store.ts), per scope. */
  secrets: (scope: string) => `${KEY_PREFIX}:secrets:${scope}`,
  /** SET of scopes that hold secrets: lets a listing find every hash. */
  secretScopes: () => `${KEY_PREFIX}:secret-scopes`,
  /** STRING: JSON InstanceDeath of an instance that died or was recycled (expires). */
  death: (id: string) => `${KEY_PREFIX}:death:${id}`,
  /** HASH `<fn>\t<reason>` -> deaths counted since the key was created (all hosts). */
  deaths: () => `${KEY_PREFIX}:deaths`,
} as const

export interface ExecutorHeartbeat {
  readonly hostId: string
  /** Epoch ms of the last beat; an executor silent for 3 intervals is considered gone. */
  readonly at: number
  readonly pid: number
  readonly functions: readonly string[]
  /**
   * The subnet its instances' addresses come from (INITLESS_SUBNET). While its heartbeat is fresh
   * no other host may claim an overlapping one. Absent from executors older than the claim.
   */
  readonly subnet?: string
  /**
   * The machine's boot id and the executor's network namespace: executors that share it share the
   * bridge and the host-wide address leases, so they may share the subnet too (a benchmark or a
   * CLI bake beside the serving executor).
   */
  readonly network?: string
  /**
   * Where other hosts reach this host's instance subnet (INITLESS_ADVERTISE_ADDRESS); absent on a
   * single host. Executors that have one route each other's subnets (executor/cluster/peers.ts).
   */
  readonly address?: string
}

export const HEARTBEAT_INTERVAL_MS = 1000
/** An executor whose last heartbeat is older than this is considered gone (ms). */
export const EXECUTOR_FRESH_MS = 3 * HEARTBEAT_INTERVAL_MS
/**
 * A host silent this long has its instances dropped from the registry by the other executors and
 * loses their routes to it (ms). Longer than EXECUTOR_FRESH_MS: an executor that restarts or
 * pauses keeps its instances, which go on serving.
 */
export const HOST_GONE_MS = 30_000

/**
 * What gateways learnt about a function's restores and requests (moving averages, ms), kept in
 * Redis so that a gateway that starts, or scales out, decides its first burst with them too.
 */
export interface ScalingEstimates {
  /** Restore enqueued -> instance ready. */
  readonly restoreMs?: number
  /** Time one request holds an instance's slot. */
  readonly serviceMs?: number
  /** Epoch ms of the write. */
  readonly at: number
}
