/**
 * Executor configuration (also used by the CLI's doctor, build and bake). Every key, its default and
 * unit is listed in docs/configuration.md (pinned by cli/config-docs.test.ts).
 */
import { availableParallelism, hostname } from 'node:os'
import { z } from 'zod'
import {
  commonEnvSchema,
  configInvalid,
  envBool,
  envBytes,
  envDuration,
  envInt,
  parseEnv,
} from '../shared/config-schema.ts'
import { subnetHas } from '../shared/subnet.ts'

/** runc's state of initless's bake containers unless INITLESS_RUNC_ROOT says otherwise. */
export const DEFAULT_RUNC_ROOT = '/run/initless/runc'

export const executorEnvSchema = commonEnvSchema.extend({
  /** Identity of this host in the registry; defaults to the machine's hostname. */
  INITLESS_HOST_ID: z
    .string()
    .regex(/^[A-Za-z0-9._-]{1,64}$/, 'expected letters, digits, . _ -')
    .optional(),
  INITLESS_DOCKER_HOST: z.string().default('unix:///var/run/docker.sock'),
  INITLESS_RUNC: z.string().default('runc'),
  INITLESS_CRIU: z.string().default('criu'),
  /**
   * The sandbox helper (executor/adapters/sandbox-helper.ts): `auto` uses the one provision.sh built from
   * this executor's source if present, else iproute2 and mount(8); `off` always uses those; an
   * absolute path names a helper binary to use.
   */
  INITLESS_SANDBOX_HELPER: z
    .string()
    .regex(/^(?:auto|off|\/.*)$/, 'expected auto, off or an absolute path')
    .default('auto'),
  INITLESS_RUNC_ROOT: z.string().regex(/^\//, 'expected an absolute path').default(DEFAULT_RUNC_ROOT),
  INITLESS_BRIDGE: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,15}$/, 'expected a device name of at most 15 characters')
    .default('initless0'),
  INITLESS_SUBNET: z
    .string()
    .regex(/^\d+\.\d+\.\d+\.\d+\/\d+$/, 'expected an IPv4 CIDR')
    .default('10.213.0.0/16'),
  /**
   * Several hosts: the IPv4 address other hosts reach this one at. Announced with this host's
   * subnet in its heartbeat; the other executors route the subnet to it (executor/cluster/peers.ts).
   */
  INITLESS_ADVERTISE_ADDRESS: z
    .string()
    .regex(/^(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)$/, 'expected an IPv4 address')
    .optional(),
  INITLESS_BASE_IMAGE: z.string().default('initless/debian:bookworm'),
  /**
   * `auto` restores lazily from this snapshot size up, eagerly below. bench/results (2026-11-29):
   * lazy beat eager for every sample, from 15 MiB (hello-node: 500 vs 610 ms p50) to 979 MiB.
   */
  INITLESS_LAZY_THRESHOLD: envBytes('8Mi'),
  /**
   * Working-set prefetch: bakes profile which pages a lazily restored instance touches first and
   * make those restore eagerly (executor/snapshots/working-set.ts).
   */
  INITLESS_PREFETCH: envBool(true),
  /**
   * Restores one executor runs at once; default one per CPU. CRIU's work is CPU-bound: in a burst
   * of 200 requests on 2 CPUs, 2 at a time brought the first instances up sooner than 4 (burst p50
   * 1272-1493 ms against 1619-1870, same run; bench/results).
   */
  INITLESS_RESTORE_CONCURRENCY: envInt(availableParallelism(), 1, 64),
  /** How often dead and idle instances are looked for. */
  INITLESS_REAP_INTERVAL: envDuration('1s'),
  /**
   * How often every current snapshot's checksums are checked again (snapshot-checksums.ts); 0: never.
   * A scrub reads every snapshot whole (flask-table: 1.2 GB, ~0.7 s).
   */
  INITLESS_SNAPSHOT_SCRUB_INTERVAL: envDuration('24h').refine((ms) => ms <= 7 * 24 * 3_600_000, {
    message: 'expected at most 168h',
  }),
  /**
   * How long after a start the function's folder and image are checked again for edits (once per
   * function however many started; 0: right after each start, beside the instance's first answer).
   */
  INITLESS_RECHECK_DELAY: envDuration('5s'),
  /** The doctor fails below this much free disk in the state dir. */
  INITLESS_MIN_FREE_DISK: envBytes('5Gi'),
  /** Shutdown deadline: in-flight restores past it are handed back to the queue. */
  INITLESS_SHUTDOWN_TIMEOUT: envDuration('20s'),
  /**
   * Versions kept per function, the active one included: older ones lose their image, snapshot
   * and build context (rollback goes back only to kept versions).
   */
  INITLESS_KEEP_VERSIONS: envInt(3, 1, 100),
  /**
   * After an instance is marked draining, how long gateways get to hear it before its shared
   * in-flight count decides when it stops: above the gateways' INITLESS_REGISTRY_REFRESH.
   */
  INITLESS_DRAIN_GRACE: envDuration('6s'),
  /**
   * Several hosts: the OCI registry (`host:port`) deploys push function images to and every host
   * pulls them from by digest. Empty: images are built on the host that needs them.
   */
  INITLESS_IMAGE_REGISTRY: z
    .string()
    .regex(/^$|^[a-z0-9.-]+(:[0-9]{1,5})?$/i, 'expected host:port (e.g. 127.0.0.1:5000) or empty')
    .default(''),
})

export type ExecutorEnv = z.infer<typeof executorEnvSchema>

export interface ExecutorConfig extends ExecutorEnv {
  readonly hostId: string
}

export function loadExecutorConfig(env: Record<string, string | undefined>): Readonly<ExecutorConfig> {
  const parsed = parseEnv(executorEnvSchema, env)
  const advertise = parsed.INITLESS_ADVERTISE_ADDRESS
  if (advertise && subnetHas(parsed.INITLESS_SUBNET, advertise))
    throw configInvalid([
      {
        key: 'INITLESS_ADVERTISE_ADDRESS',
        message: `${advertise} is inside INITLESS_SUBNET ${parsed.INITLESS_SUBNET}: it must be this host's own address, which other hosts reach`,
      },
    ])
  return Object.freeze({ ...parsed, hostId: parsed.INITLESS_HOST_ID ?? hostname() })
}
