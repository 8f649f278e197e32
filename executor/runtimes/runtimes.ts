/**
 * Restore runtimes behind one interface. `lazy` and `eager` restore a snapshot with runc + CRIU
 * into a sandbox; `boot` starts the image with a plain `docker run` (no snapshot: what container
 * FaaS platforms pay, and the fallback when a snapshot is missing or broken). `docker` (Docker's
 * own checkpoint API, a benchmark reference only) lives in docker-checkpoint.ts.
 */
import { join } from 'node:path'
import { InitlessError, errorMessage } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import type { RuntimeKind } from '../../shared/contracts.ts'
import { criuLogDuration, killLazyPages, type Criu, type LazyPagesDaemon } from '../adapters/criu.ts'
import type { DockerEngine, ImageConfig } from '../adapters/docker.ts'
import { openOutput } from '../adapters/output.ts'
import { isProcessAlive, readPidFile } from '../adapters/process.ts'
import { waitReady } from '../adapters/probe.ts'
import type { Runc } from '../adapters/runc.ts'
import { cgroupPath, type Sandbox, type SandboxManager } from '../sandbox/sandbox.ts'
import type { Snapshot } from '../snapshots/snapshot-store.ts'
import { resolveSeccomp } from '../sandbox/seccomp.ts'
import type { SecretFiles, SecretOwner } from '../sandbox/secret-files.ts'
import { SECRETS_MOUNT, type SecretValue } from '../../shared/secrets.ts'

export interface StartRequest {
  readonly instanceId: string
  readonly fn: FunctionDef
  readonly image: ImageConfig
  /** Required by lazy and eager. */
  readonly snapshot?: Snapshot
  /** A sandbox prepared ahead by the pool (its lowers match `snapshot`). */
  readonly pooled?: PooledSandbox
  /** Sandbox settings for a fresh sandbox (when not pooled). */
  readonly prepare: () => Promise<Sandbox>
  readonly hostLabel: string
  /**
   * The function's secret values (read by the instance manager), written for the instance just
   * before its restore or boot and bind-mounted at /run/secrets. Absent: no secrets, no mount.
   */
  readonly secrets?: InstanceSecrets
}

export interface InstanceSecrets {
  readonly values: readonly SecretValue[]
  /** The function's user, who owns the files. */
  readonly owner: SecretOwner
  /** How long reading them took (ms), reported with the phases. */
  readonly readMs: number
}

export interface StartedInstance {
  readonly id: string
  readonly fn: string
  readonly runtime: RuntimeKind
  readonly ip: string
  readonly port: number
  /** Host pid of the instance's process (runc runtimes). */
  readonly pid?: number
  readonly sandbox?: Sandbox
  readonly containerId?: string
  readonly lazyDaemon?: LazyPagesDaemon
  readonly pooled: boolean
  readonly phases: {
    readonly sandboxMs: number
    readonly restoreMs: number
    readonly readyMs: number
    readonly criuMs?: number
    readonly secretsMs?: number
  }
  readonly snapshotBytes: number
}

/**
 * A pre-started sandbox. For a function its policy restores lazily, the pool also starts the
 * restore's lazy-pages daemon ahead (it waits on its socket for as long as it takes): one process
 * start fewer on the cold-start path.
 */
export interface PooledSandbox {
  readonly sandbox: Sandbox
  readonly lazyDaemon?: LazyPagesDaemon
}

export interface Runtime {
  readonly kind: RuntimeKind
  start(req: StartRequest): Promise<StartedInstance>
  /** Get a sandbox the pool prepared ready for this runtime's restores of `snapshot`. */
  prime?(sandbox: Sandbox, snapshot: Snapshot): Promise<PooledSandbox>
}

/** Kill a pooled sandbox's daemon (if any) and release the sandbox. */
export async function discardPooled(
  sandboxes: Pick<SandboxManager, 'destroy'>,
  pooled: PooledSandbox,
): Promise<void> {
  killLazyPages(pooled.lazyDaemon)
  await sandboxes.destroy(pooled.sandbox)
}

export interface SandboxRestore {
  /** The restored process (the pid file CRIU or runc wrote). */
  readonly pid: number
  /** The lazy-pages daemon serving the restored process (lazy restores): it exits once done. */
  readonly daemon?: LazyPagesDaemon
  /** How long CRIU ran, when the executor ran it itself. */
  readonly criuMs?: number
}

/**
 * Restore a checkpoint into a prepared sandbox: `criu restore` directly where the sandbox is ready
 * for it (Sandbox.direct), `runc restore` otherwise (with the CRIU config runc hands over); a
 * lazy-pages daemon for a lazy restore; the function's output log as stdio; then the CPU limit the
 * sandbox was prepared without.
 */
export async function restoreIntoSandbox(
  deps: { runc: Runc; criu: Criu; sandboxes: SandboxManager },
  sb: Sandbox,
  imagesDir: string,
  lazy: boolean,
  /** A lazy-pages daemon the pool started ahead for this sandbox. */
  started?: LazyPagesDaemon,
  opts: {
    criuLogLevel?: number
    /** The checkpoint's descriptors, read ahead (Criu.descriptors); read at the restore if absent. */
    descriptors?: Promise<readonly string[]>
  } = {},
): Promise<SandboxRestore> {
  const usable = started && isProcessAlive(started.pid) ? started : undefined
  if (!lazy) killLazyPages(usable)
  if (!sb.direct) await deps.criu.writeRestoreConfig(sb.criuConfig, { lazy, cgroupRoot: cgroupPath(sb.id) })
  const daemon = lazy ? (usable ?? (await deps.criu.startLazyPages(imagesDir, sb.criuWorkDir))) : undefined
  try {
    let criuMs: number | undefined
    if (sb.direct) {
      criuMs = await deps.criu.restore({
        imagesDir,
        workDir: sb.criuWorkDir,
        root: sb.rootfs,
        pidFile: sb.pidFile,
        netnsPath: sb.netns.path,
        cgroupRoot: cgroupPath(sb.id),
        externalMounts: sb.direct.externalMounts,
        lazy,
        outputPath: sb.logFile,
        ...(opts.criuLogLevel === undefined ? {} : { logLevel: opts.criuLogLevel }),
        ...(opts.descriptors ? { descriptors: await opts.descriptors } : {}),
      })
    } else {
      const out = await openOutput(sb.logFile)
      try {
        await deps.runc.restore(sb.id, {
          bundle: sb.bundle,
          imagePath: imagesDir,
          workPath: sb.criuWorkDir,
          pidFile: sb.pidFile,
          // stdin stays /dev/null; the pipes the process had at checkpoint become its output log.
          stdio: { stdin: 'ignore', stdout: out.fd, stderr: out.fd },
        })
        criuMs = await criuLogDuration(join(sb.criuWorkDir, 'restore.log'))
      } finally {
        await out.close()
      }
    }
    // Both on the way to the instance's readiness: side by side.
    const [pid] = await Promise.all([readPidFile(sb.pidFile), deps.sandboxes.limitCpu(sb)])
    return { pid, ...(daemon ? { daemon } : {}), ...(criuMs === undefined ? {} : { criuMs }) }
  } catch (err) {
    killLazyPages(daemon)
    throw err
  }
}

/** How often the readiness probe retries right after a restore: the socket is usually there at once. */
const RESTORE_PROBE_INTERVAL_MS = 1
/** How often it retries while runc is still restoring. */
const PROBE_DURING_RESTORE_MS = 4
/** How long one attempt made while runc is still restoring may wait for its answer. */
const PROBE_ATTEMPT_DURING_RESTORE_MS = 500

export function createRuncRestoreRuntime(deps: {
  runc: Runc
  criu: Criu
  sandboxes: SandboxManager
  lazy: boolean
  /** Checks the snapshot's files before CRIU reads them (see SnapshotStore.verify). */
  verify: (snapshot: Snapshot) => Promise<void>
}): Runtime {
  const kind: RuntimeKind = deps.lazy ? 'lazy' : 'eager'
  return {
    kind,
    async prime(sandbox, snapshot) {
      if (!deps.lazy) return { sandbox }
      return { sandbox, lazyDaemon: await deps.criu.startLazyPages(snapshot.imagesDir, sandbox.criuWorkDir) }
    },

    async start(req) {
      const snapshot = req.snapshot
      if (!snapshot)
        throw new InitlessError('ERR_SNAPSHOT_NOT_FOUND', `${req.fn.name}: no snapshot to restore`)
      const m = req.fn.manifest
      const t0 = performance.now()
      // Without a pooled sandbox, the lazy-pages daemon's start (it needs only the sandbox's CRIU
      // work dir), the read of the checkpoint's descriptors and the snapshot check run while the
      // sandbox is being prepared. Started in this order: the daemon (~4 ms to listen) and the
      // sandbox are the critical path, and the snapshot check's stats would otherwise queue
      // ahead of their first file operations in libuv's thread pool.
      const daemonStarting: Promise<LazyPagesDaemon | undefined> =
        !req.pooled && deps.lazy
          ? deps.sandboxes
              .workDir(req.instanceId)
              .then((dir) => deps.criu.startLazyPages(snapshot.imagesDir, dir))
              .catch(() => undefined) // restoreIntoSandbox starts one then; a real problem shows there
          : Promise.resolve(req.pooled?.lazyDaemon)
      // An async function: a prepare() that throws at once rejects like one that fails later.
      const preparing = (async () => req.pooled?.sandbox ?? req.prepare())()
      preparing.catch(() => undefined) // awaited below
      const descriptors = deps.criu.descriptors(snapshot.imagesDir)
      descriptors.catch(() => undefined) // awaited by restoreIntoSandbox
      const verified = deps.verify(snapshot)
      verified.catch(() => undefined) // awaited below
      let sb: Sandbox
      try {
        sb = await preparing
      } catch (err) {
        killLazyPages(await daemonStarting)
        throw err
      }
      const t1 = performance.now()
      let daemon = await daemonStarting
      try {
        let secretsMs: number | undefined
        if (req.secrets) {
          const ts = performance.now()
          await deps.sandboxes.fillSecrets(sb, req.secrets.values, req.secrets.owner)
          secretsMs = req.secrets.readMs + (performance.now() - ts)
        }
        await verified
        // Probe while runc is still finishing: CRIU resumes the process some 20-30 ms before runc
        // exits (it waits for CRIU to exit, writes its state and the pid file). Slowly until then,
        // a refused connection costs CPU the restore needs; tightly once it is done.
        let pid: number | undefined
        let restored = false
        let criuMs: number | undefined
        const aborted = new AbortController()
        const restoring = restoreIntoSandbox(deps, sb, snapshot.imagesDir, deps.lazy, daemon, {
          descriptors,
        }).then((r) => {
          daemon = r.daemon
          criuMs = r.criuMs
          pid = r.pid
          restored = true
          return performance.now()
        })
        restoring.catch(() => aborted.abort())
        const probing = waitReady(sb.netns.ip, m.port, {
          path: m.readiness.path,
          expect: m.readiness.expect,
          timeoutMs: Math.min(m.readiness.timeout, 30_000),
          intervalMs: () => (restored ? RESTORE_PROBE_INTERVAL_MS : PROBE_DURING_RESTORE_MS),
          // A connection made while CRIU is still at work is not owed a prompt answer: retry it
          // soon rather than wait out the full attempt timeout.
          attemptTimeoutMs: () => (restored ? 10_000 : PROBE_ATTEMPT_DURING_RESTORE_MS),
          isAlive: () => pid === undefined || isProcessAlive(pid),
          signal: aborted.signal,
        })
        probing.catch(() => undefined) // awaited below, once the restore's outcome is known
        const t2 = await restoring
        await probing
        const t3 = performance.now()
        return {
          id: req.instanceId,
          fn: req.fn.name,
          runtime: kind,
          ip: sb.netns.ip,
          port: m.port,
          pid,
          sandbox: sb,
          pooled: req.pooled !== undefined,
          phases: {
            sandboxMs: t1 - t0,
            restoreMs: t2 - t1,
            ...(criuMs === undefined ? {} : { criuMs }),
            ...(secretsMs === undefined ? {} : { secretsMs }),
            readyMs: Math.max(0, t3 - t2),
          },
          snapshotBytes: snapshot.meta.sizeBytes,
          ...(daemon ? { lazyDaemon: daemon } : {}),
        }
      } catch (err) {
        killLazyPages(daemon)
        await deps.sandboxes.destroy(sb).catch(() => undefined)
        throw new InitlessError(
          'ERR_RESTORE_FAILED',
          `${req.fn.name}: ${kind} restore failed: ${errorMessage(err)}`,
          { cause: err },
        )
      }
    },
  }
}

/**
 * `docker run`. Secrets are bind-mounted read-only at /run/secrets from the instance's directory
 * on the executor's secrets tmpfs, written before the container starts; releaseInstance removes it.
 */
export function createBootRuntime(deps: {
  docker: DockerEngine
  secrets?: Pick<SecretFiles, 'fill' | 'remove'>
}): Runtime {
  return {
    kind: 'boot',
    async start(req) {
      const m = req.fn.manifest
      const t0 = performance.now()
      const env = Object.entries(m.env).map(([k, v]) => `${k}=${v}`)
      // The same filter a restored instance has (the checkpoint's), not Docker's default.
      const { profile } = await resolveSeccomp(req.fn)
      const secrets = req.secrets
      if (secrets && !deps.secrets)
        throw new InitlessError(
          'ERR_SANDBOX_SETUP_FAILED',
          `${req.fn.name}: this executor cannot mount secrets`,
        )
      const secretsDir = secrets && (await deps.secrets?.fill(req.instanceId, secrets.values, secrets.owner))
      const secretsMs = secrets ? secrets.readMs + (performance.now() - t0) : undefined
      const running = deps.docker.runContainer({
        name: `initless-${req.instanceId}`,
        image: req.image.id,
        ...(m.command ? { cmd: m.command } : {}),
        env,
        memoryBytes: m.resources.memory,
        cpus: m.resources.cpus,
        pids: m.resources.pids,
        seccomp: profile ?? 'unconfined',
        labels: {
          'initless.instance': req.instanceId,
          'initless.fn': req.fn.name,
          'initless.host': req.hostLabel,
        },
        ...(secretsDir ? { binds: [{ source: secretsDir, target: SECRETS_MOUNT, readOnly: true }] } : {}),
      })
      const { id, ip } = await running.catch(async (err: unknown) => {
        if (secretsDir) await deps.secrets?.remove(req.instanceId)
        throw err
      })
      const t1 = performance.now()
      try {
        await waitReady(ip, m.port, {
          path: m.readiness.path,
          expect: m.readiness.expect,
          timeoutMs: m.readiness.timeout,
          // Parallel-fast probing at the container's own address; never through docker-proxy.
          intervalMs: 2,
        })
      } catch (err) {
        const logs = await deps.docker.containerLogs(id, 15).catch(() => '')
        await deps.docker.removeContainer(id).catch(() => undefined)
        if (secretsDir) await deps.secrets?.remove(req.instanceId)
        throw new InitlessError(
          'ERR_INSTANCE_NOT_READY',
          `${req.fn.name}: boot failed: ${errorMessage(err)}${logs ? `\n${logs}` : ''}`,
          { cause: err },
        )
      }
      const t2 = performance.now()
      return {
        id: req.instanceId,
        fn: req.fn.name,
        runtime: 'boot',
        ip,
        port: m.port,
        containerId: id,
        pooled: false,
        phases: {
          sandboxMs: 0,
          restoreMs: t1 - t0,
          readyMs: t2 - t1,
          ...(secretsMs === undefined ? {} : { secretsMs }),
        },
        snapshotBytes: 0,
      }
    },
  }
}

/** `auto` restores lazily from `lazyThreshold` bytes up: lazy pays off only for large snapshots. */
export function chooseRuntime(
  policy: 'auto' | 'lazy' | 'eager' | 'boot',
  snapshotBytes: number | undefined,
  lazyThreshold: number,
): RuntimeKind {
  if (policy === 'boot' || snapshotBytes === undefined) return 'boot'
  if (policy === 'auto') return snapshotBytes >= lazyThreshold ? 'lazy' : 'eager'
  return policy
}
