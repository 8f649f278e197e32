/**
 * `initless doctor`: checks every component initless stands on and says how to fix what is wrong.
 * All I/O comes in through deps, so tests can point it at a stopped engine, a stopped Redis or an
 * old CRIU and read the report.
 */
import { statfs, readFile } from 'node:fs/promises'
import { compareVersions, parseCriuVersion } from '../executor/adapters/criu.ts'
import type { EngineInfo } from '../executor/adapters/docker.ts'
import type { CommandRunner } from '../executor/adapters/exec.ts'
import type { PolicyStatus } from '../executor/adapters/firewall.ts'
import { formatRestorePath, lazyRestoreHazard, type RestorePath } from '../executor/sandbox/restore-path.ts'
import type { SelfTestStep } from '../executor/runtimes/selftest.ts'
import { allowedCallCount, DEFAULT_SECCOMP_PROFILE } from '../executor/sandbox/seccomp-profile.ts'
import { RCU_EXPEDITED } from '../executor/sandbox/host-tuning.ts'
import { errorMessage } from '../shared/errors.ts'
import { formatBytes } from '../shared/units.ts'
import {
  describeQueueRedis,
  durableFix,
  isDurable,
  type QueueRedis,
  type QueueRedisState,
} from './queue-redis.ts'

export interface CheckResult {
  readonly name: string
  readonly ok: boolean
  readonly detail: string
  /** What to do about a failure. */
  readonly fix?: string
  /** A passed check's advice: the host works, but would serve better with this changed. */
  readonly warn?: string
  readonly ms: number
}

export interface DoctorDeps {
  readonly run: CommandRunner
  readonly nodeVersion: string
  readonly criuBin: string
  readonly runcBin: string
  readonly stateDir: string
  readonly minFreeDisk: number
  readonly dockerInfo: () => Promise<EngineInfo>
  readonly redisVersion: () => Promise<string>
  readonly redisUrl: string
  /** The Redis of the asynchronous invocation queues (cli/queue-redis.ts) and a probe of it. */
  readonly queueRedis?: QueueRedis & { readonly probe: () => Promise<QueueRedisState> }
  /**
   * INITLESS_SANDBOX_HELPER, the helper binary it resolves to (undefined: none installed, or off)
   * and the build id installed with it (scripts/build-native.sh).
   */
  readonly sandboxHelper: {
    readonly setting: string
    readonly path: string | undefined
    readonly buildId?: string
  }
  /** How restores run on this host and why (SandboxManager.restorePath). */
  readonly restorePath: () => Promise<RestorePath>
  /** The host's transparent huge pages mode (`always`, `madvise`, `never`; undefined: no THP). */
  readonly thpMode: () => Promise<string | undefined>
  /** /sys/kernel/rcu_expedited (host-tuning.ts); undefined: the kernel has no such switch. */
  readonly rcuExpedited: () => Promise<boolean | undefined>
  /** The instances' network policy as the kernel holds it (firewall.ts); omitted: not checked. */
  readonly networkPolicy?: { readonly bridge: string; readonly status: () => Promise<PolicyStatus> }
  /**
   * INITLESS_IMAGE_REGISTRY ('' when unset) and a probe of a registry's API root (`GET /v2/`):
   * resolves with its API version, rejects when it does not answer.
   */
  readonly imageRegistry?: { readonly address: string; readonly probe: (address: string) => Promise<string> }
  /** The end-to-end restore probe; omitted with --quick. */
  readonly selfTest?: () => Promise<SelfTestStep[]>
}

const PROVISION = 'run `bash scripts/provision.sh` as root (idempotent)'
export const MIN_CRIU = '4.2.0'
export const MIN_REDIS = '6.2.0'
export const MIN_NODE = '20.10.0'
/** Where scripts/provision.sh starts the OCI registry unless told otherwise. */
export const PROVISIONED_REGISTRY = '127.0.0.1:5000'

/** What a check found: its detail, and for a check that passes with advice, that advice. */
type Found = string | { readonly detail: string; readonly warn: string }
type Check = { name: string; fix: string; run: () => Promise<Found> }

/** `GET /v2/` of an OCI registry (plain HTTP, as provisioning serves it): its API version. */
export async function probeImageRegistry(address: string): Promise<string> {
  const res = await fetch(`http://${address}/v2/`, { signal: AbortSignal.timeout(3000) }).catch(
    (err: unknown) => {
      // fetch's own message is "fetch failed"; the reason (ECONNREFUSED, a timeout) is its cause.
      const cause = (err as { cause?: { code?: string; message?: string } }).cause
      throw new Error(cause?.code ?? cause?.message ?? errorMessage(err))
    },
  )
  if (res.status !== 200 && res.status !== 401) throw new Error(`GET /v2/ answered ${res.status}`)
  return `registry API ${res.headers.get('docker-distribution-api-version') ?? 'unknown'}`
}

/** The OCI registry: required only when INITLESS_IMAGE_REGISTRY names one. */
function imageRegistryCheck(reg: NonNullable<DoctorDeps['imageRegistry']>): Check {
  return {
    name: 'image registry',
    fix: `start the registry at ${reg.address || PROVISIONED_REGISTRY} (${PROVISION}, INITLESS_REGISTRY_ADDRESS) or correct INITLESS_IMAGE_REGISTRY`,
    run: async () => {
      if (reg.address) {
        const api = await reg.probe(reg.address).catch((err: unknown) => {
          throw new Error(`INITLESS_IMAGE_REGISTRY ${reg.address} does not answer: ${errorMessage(err)}`)
        })
        return `${reg.address} (${api}): deploys push images there, every host pulls them by digest`
      }
      const local = await reg.probe(PROVISIONED_REGISTRY).then(
        (api) => `a registry answers at ${PROVISIONED_REGISTRY} (${api})`,
        () => `none answers at ${PROVISIONED_REGISTRY}`,
      )
      return `INITLESS_IMAGE_REGISTRY unset: images stay on the host that built them (one host); ${local}`
    },
  }
}

export async function runDoctor(deps: DoctorDeps): Promise<CheckResult[]> {
  let info: Promise<EngineInfo> | undefined
  const dockerInfo = () => (info ??= deps.dockerInfo())
  let runcOut: ReturnType<CommandRunner> | undefined
  /** `runc --version`, run once for the runc and seccomp checks. */
  const runcVersion = () => (runcOut ??= deps.run(deps.runcBin, ['--version'], { timeoutMs: 10_000 }))
  const checks: Check[] = [
    {
      name: 'node',
      fix: `install Node.js >= ${MIN_NODE}`,
      run: async () => {
        const v = deps.nodeVersion.replace(/^v/, '')
        if (compareVersions(v, MIN_NODE) < 0) throw new Error(`Node.js ${v} is older than ${MIN_NODE}`)
        return `Node.js ${v}`
      },
    },
    {
      name: 'docker engine',
      fix: `start the Docker engine: ${PROVISION} (it starts dockerd with experimental mode)`,
      run: async () => {
        const info = await dockerInfo().catch((err: unknown) => {
          throw new Error(`the Docker engine does not answer: ${errorMessage(err)}`)
        })
        return `Docker ${info.serverVersion} (API ${info.apiVersion}, cgroup driver ${info.cgroupDriver})`
      },
    },
    {
      name: 'docker experimental',
      fix: `set "experimental": true in /etc/docker/daemon.json and restart dockerd: ${PROVISION}`,
      run: async () => {
        const info = await dockerInfo().catch(() => {
          throw new Error('cannot tell: the Docker engine does not answer')
        })
        if (!info.experimental)
          throw new Error('the Docker engine is not in experimental mode (needed for its checkpoint API)')
        return 'experimental features on'
      },
    },
    {
      name: 'runc',
      fix: `install runc >= 1.1: ${PROVISION}`,
      run: async () => {
        const out = await runcVersion()
        const v = /runc version (\d+\.\d+\.\d+)/.exec(out.stdout)?.[1]
        if (!v) throw new Error(`cannot read the runc version from: ${out.stdout.trim()}`)
        if (compareVersions(v, '1.1.0') < 0) throw new Error(`runc ${v} is older than 1.1`)
        return `runc ${v}`
      },
    },
    {
      name: 'seccomp',
      fix: `instances need a kernel with CONFIG_SECCOMP_FILTER and runc built with libseccomp (Debian's is): ${PROVISION}`,
      run: async () => {
        const status = await readFile('/proc/self/status', 'utf8')
        if (!/^Seccomp:/m.test(status))
          throw new Error('the kernel has no seccomp (no Seccomp: line in /proc/self/status)')
        const actions = await readFile('/proc/sys/kernel/seccomp/actions_avail', 'utf8').catch(() => '')
        if (!/\berrno\b/.test(actions))
          throw new Error('the kernel has no seccomp filters (CONFIG_SECCOMP_FILTER)')
        const out = await runcVersion()
        const lib = /libseccomp:\s*(\S+)/.exec(out.stdout)?.[1]
        if (!lib) throw new Error(`${deps.runcBin} was built without libseccomp: it cannot install a filter`)
        return `kernel filters, runc with libseccomp ${lib}; default profile allows ${allowedCallCount(DEFAULT_SECCOMP_PROFILE)} calls`
      },
    },
    {
      name: 'criu version',
      fix: `CRIU >= ${MIN_CRIU} must come first in PATH (Debian's 3.17 fails on current kernels): ${PROVISION} builds 4.2.1 into /usr/local/sbin`,
      run: async () => {
        const out = await deps.run(deps.criuBin, ['--version'], { timeoutMs: 10_000 })
        const v = parseCriuVersion(out.stdout)
        if (!v) throw new Error(`cannot read the CRIU version from: ${out.stdout.trim()}`)
        if (compareVersions(v, MIN_CRIU) < 0)
          throw new Error(`CRIU ${v} (${deps.criuBin}) is older than ${MIN_CRIU}`)
        return `CRIU ${v}`
      },
    },
    {
      name: 'criu check',
      fix: `CRIU's own kernel check failed: use CRIU ${MIN_CRIU} or newer (${PROVISION}) and a kernel with CHECKPOINT_RESTORE`,
      run: async () => {
        const out = await deps.run(deps.criuBin, ['check'], { timeoutMs: 60_000, okCodes: [0, 1] })
        const text = `${out.stdout}\n${out.stderr}`
        if (out.code !== 0 || !/Looks good/.test(text)) {
          throw new Error(
            `criu check: ${
              text
                .trim()
                .split('\n')
                .filter((l) => /Error|error/.test(l))
                .slice(0, 3)
                .join(' | ') || `exit ${out.code}`
            }`,
          )
        }
        return 'Looks good'
      },
    },
    {
      name: 'lazy pages',
      fix: 'lazy restores need userfaultfd with non-cooperative events (kernel CONFIG_USERFAULTFD); without it use restore policy eager',
      run: async () => {
        const out = await deps.run(deps.criuBin, ['check', '--feature', 'uffd-noncoop'], {
          timeoutMs: 30_000,
          okCodes: [0, 1],
        })
        if (out.code !== 0)
          throw new Error(
            `userfaultfd non-cooperative mode is not supported: ${(out.stdout + out.stderr).trim()}`,
          )
        return 'uffd-noncoop supported'
      },
    },
    {
      name: 'sandbox helper',
      fix: `${PROVISION}: it builds and installs the helper from executor/native/sandbox-helper.c (scripts/build-native.sh)`,
      run: async () => {
        const { setting, path } = deps.sandboxHelper
        if (setting === 'off')
          return 'off (INITLESS_SANDBOX_HELPER=off): sandboxes prepared with ip and mount(8)'
        if (!path)
          throw new Error(
            'none installed: sandboxes are prepared with ip and mount(8), 60-80 ms more per cold start',
          )
        const res = await deps.run(path, [], { input: '1\tping\n', timeoutMs: 10_000 })
        if (res.stdout !== '1\tok\n')
          throw new Error(`${path} answered ${JSON.stringify(res.stdout)} to a ping`)
        const { buildId } = deps.sandboxHelper
        return buildId ? `${path} (build ${buildId})` : path
      },
    },
    {
      name: 'restore path',
      fix: 'a kernel with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF, and an executor with CAP_SYS_ADMIN; until then restores go through runc restore, ~100 ms slower (docs/cgroup-v2.md)',
      run: async () => {
        const path = await deps.restorePath()
        if (path.filterError) throw new Error(`${formatRestorePath(path)}: ${path.filterError}`)
        return formatRestorePath(path)
      },
    },
    ...(deps.networkPolicy ? [networkPolicyCheck(deps.networkPolicy)] : []),
    {
      name: 'lazy restores',
      fix: 'echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (and transparent_hugepage=madvise on the kernel command line), or direct restores with the sandbox helper; until then give functions restore policy eager (docs/cgroup-v2-vm.md)',
      run: async () => {
        const [path, thp] = await Promise.all([deps.restorePath(), deps.thpMode()])
        const hazard = lazyRestoreHazard(path, deps.sandboxHelper.path !== undefined, thp)
        if (hazard) throw new Error(hazard)
        return `transparent huge pages ${thp ?? 'not built in'}${thp === 'always' ? ', CRIU spawned with them off' : ''}`
      },
    },
    {
      name: 'redis',
      fix: `start Redis >= ${MIN_REDIS} at ${deps.redisUrl} (${PROVISION}) or set INITLESS_REDIS_URL`,
      run: async () => {
        const v = await deps.redisVersion().catch((err: unknown) => {
          throw new Error(`Redis at ${deps.redisUrl} does not answer: ${errorMessage(err)}`)
        })
        if (compareVersions(v, MIN_REDIS) < 0)
          throw new Error(`Redis ${v} is older than ${MIN_REDIS} (BullMQ needs it)`)
        return `Redis ${v}`
      },
    },
    ...(deps.queueRedis ? [queueRedisCheck(deps.queueRedis)] : []),
    ...(deps.imageRegistry ? [imageRegistryCheck(deps.imageRegistry)] : []),
    {
      name: 'kernel features',
      fix: 'initless needs overlayfs, network namespaces, veth and the cgroup v1 memory/cpu/pids controllers (or cgroup v2)',
      run: async () => {
        const fs = await readFile('/proc/filesystems', 'utf8')
        const missing: string[] = []
        if (!/\toverlay\n/.test(fs)) missing.push('overlayfs')
        const cgroups = await readFile('/proc/self/cgroup', 'utf8')
        if (!/memory/.test(cgroups) && !/^0::/m.test(cgroups)) missing.push('memory cgroup')
        const release = (await readFile('/proc/sys/kernel/osrelease', 'utf8')).trim()
        if (missing.length) throw new Error(`missing: ${missing.join(', ')}`)
        return `kernel ${release}, overlayfs, cgroups`
      },
    },
    {
      name: 'rcu grace periods',
      fix: `echo 1 > ${RCU_EXPEDITED}`,
      run: async (): Promise<Found> => {
        const expedited = await deps.rcuExpedited()
        if (expedited === undefined) return `no ${RCU_EXPEDITED} on this kernel`
        if (expedited)
          return 'expedited: the cgroup moves and mount changes of a restore do not wait for the scheduler tick'
        return {
          detail: 'normal: every restore waits for RCU grace periods (cgroup v2 task moves, mount teardown)',
          warn:
            `echo 1 > ${RCU_EXPEDITED} takes ~15 ms off each restore here (an IPI per grace period to every CPU); ` +
            'scripts/provision.sh sets it unless INITLESS_KERNEL_TUNING=0 (docs/sandbox.md, "Host tuning")',
        }
      },
    },
    {
      name: 'disk',
      fix: `free disk space under ${deps.stateDir} (snapshots hold whole process memories) or set INITLESS_STATE_DIR`,
      run: async () => {
        const s = await statfs(deps.stateDir).catch(() => statfs('/'))
        const free = s.bavail * s.bsize
        if (free < deps.minFreeDisk)
          throw new Error(
            `${formatBytes(free)} free under ${deps.stateDir}, below ${formatBytes(deps.minFreeDisk)}`,
          )
        return `${formatBytes(free)} free under ${deps.stateDir}`
      },
    },
  ]

  const results: CheckResult[] = []
  for (const check of checks) {
    const started = performance.now()
    try {
      const found = await check.run()
      results.push({
        name: check.name,
        ok: true,
        ...(typeof found === 'string' ? { detail: found } : found),
        ms: performance.now() - started,
      })
    } catch (err) {
      results.push({
        name: check.name,
        ok: false,
        detail: errorMessage(err),
        fix: check.fix,
        ms: performance.now() - started,
      })
    }
  }

  if (deps.selfTest) {
    const prerequisites = ['runc', 'criu version', 'criu check']
    const blocked = results.filter((r) => prerequisites.includes(r.name) && !r.ok).map((r) => r.name)
    if (blocked.length) {
      results.push({
        name: 'restore probe',
        ok: false,
        detail: `skipped: ${blocked.join(', ')} failed`,
        fix: 'fix the checks above first',
        ms: 0,
      })
    } else {
      const started = performance.now()
      const steps = await deps.selfTest()
      const failed = steps.find((s) => !s.ok)
      results.push({
        name: 'restore probe',
        ok: !failed && steps.length > 0,
        detail: failed
          ? `${failed.name}: ${failed.detail}`
          : steps.map((s) => `${s.name} ${Math.round(s.ms)} ms`).join('; '),
        ...(failed
          ? { fix: 'read the CRIU/runc log lines above; running as root with full capabilities is required' }
          : {}),
        ms: performance.now() - started,
      })
    }
  }
  return results
}

/**
 * The queues' Redis: reachable and new enough (or asynchronous invocations cannot be accepted), and
 * durable: a 202 is only as safe as its AOF. Not durable passes with advice: the gateway works.
 */
function queueRedisCheck(q: NonNullable<DoctorDeps['queueRedis']>): Check {
  const where = describeQueueRedis(q)
  return {
    name: 'queue redis',
    fix:
      q.source === 'provisioned'
        ? `${PROVISION}: it starts the queue Redis (appendfsync always), or set INITLESS_ASYNC_REDIS_URL`
        : q.source === 'setting'
          ? `start Redis >= ${MIN_REDIS} at ${q.url} or correct INITLESS_ASYNC_REDIS_URL`
          : `start Redis >= ${MIN_REDIS} at ${q.url} or set INITLESS_REDIS_URL`,
    run: async (): Promise<Found> => {
      const state = await q.probe().catch((err: unknown) => {
        throw new Error(`the queue Redis at ${where} does not answer: ${errorMessage(err)}`)
      })
      if (compareVersions(state.version, MIN_REDIS) < 0)
        throw new Error(
          `the queue Redis ${state.version} at ${q.url} is older than ${MIN_REDIS} (BullMQ needs it)`,
        )
      if (state.appendonly === undefined || state.appendfsync === undefined)
        return {
          detail: `queues on ${where}: CONFIG GET is refused, so whether a 202 is on disk cannot be told`,
          warn: 'make sure it runs with appendonly yes and appendfsync always (docs/async.md, "Redis persistence")',
        }
      const policy = `appendonly ${state.appendonly}, appendfsync ${state.appendfsync}`
      if (!isDurable(state))
        return {
          detail: `queues on ${where}: ${policy}: ${
            state.appendonly === 'yes'
              ? 'an operating-system crash or power loss may lose the last second of 202s'
              : 'no AOF: a restart of Redis loses every queued invocation'
          }`,
          warn: durableFix(q),
        }
      return `Redis ${state.version} at ${where}: ${policy} (a 202 is on disk)`
    },
  }
}

/**
 * The executor sets the policy at start and removes it at shutdown: no rule at all is a host
 * without a running executor; some rules but not all is a policy tampered with (or Docker's
 * restart putting its FORWARD jump first), which the executor's next start repairs.
 */
function networkPolicyCheck(p: NonNullable<DoctorDeps['networkPolicy']>): Check {
  return {
    name: 'network policy',
    fix: `${PROVISION} (iptables), then restart the executor: it rewrites its rules at start (docs/security.md)`,
    run: async () => {
      const s = await p.status().catch((err: unknown) => {
        throw new Error(`iptables-save failed: ${errorMessage(err)}`)
      })
      if (s.applied) return `applied on ${p.bridge}`
      if (s.problems.length && s.problems.every((x) => /missing|does not jump/.test(x)))
        return `not set on ${p.bridge} (no executor running: it sets the rules at start)`
      throw new Error(`incomplete on ${p.bridge}: ${s.problems.join('; ')}`)
    },
  }
}

export function formatDoctorReport(results: readonly CheckResult[]): string {
  const lines = results.map((r) => {
    const head = `${r.ok ? (r.warn ? 'warn' : 'ok  ') : 'FAIL'} ${r.name.padEnd(20)} ${r.detail.split('\n')[0] ?? ''}`
    if (r.ok) return r.warn ? `${head}\n       advice: ${r.warn}` : head
    const rest = r.detail
      .split('\n')
      .slice(1, 8)
      .map((l) => `       ${l}`)
    return [head, ...rest, `       fix: ${r.fix ?? 'see above'}`].join('\n')
  })
  const failed = results.filter((r) => !r.ok).length
  const warned = results.filter((r) => r.ok && r.warn).length
  const advice = warned ? ` (${warned} with advice)` : ''
  lines.push(failed ? `\n${failed} check(s) failed${advice}` : `\nall checks passed${advice}`)
  return lines.join('\n')
}
