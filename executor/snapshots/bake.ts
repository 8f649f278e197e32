/**
 * Snapshot baking: boot the function once with runc in its own network namespace, wait until it is
 * ready, warm it up (so JIT-compiled code and lazily initialised state land in the snapshot, like
 * SnapStart's priming), checkpoint it with CRIU and store the snapshot. A failed bake reports the
 * function's last output lines and leaves no container, mount, namespace or half-written snapshot.
 */
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import type { Logger } from 'pino'
import { InitlessError, errorMessage, isInitlessError, type ErrorCode } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { manifestHash, type Manifest } from '../../shared/manifest.ts'
import { formatBytes } from '../../shared/units.ts'
import { bakedManifest } from '../../shared/versions.ts'
import type { Criu } from '../adapters/criu.ts'
import type { DockerEngine, ImageConfig } from '../adapters/docker.ts'
import { tail } from '../adapters/exec.ts'
import { parseImageUser, SANDBOX_LAYOUT_VERSION } from '../sandbox/oci-spec.ts'
import { isProcessAlive, readPidFile } from '../adapters/process.ts'
import { waitReady } from '../adapters/probe.ts'
import { ensureImageRootfs, touchImageRootfs } from '../adapters/rootfs.ts'
import type { Runc } from '../adapters/runc.ts'
import { sandboxLimits, type ProcessSpec, type Sandbox, type SandboxManager } from '../sandbox/sandbox.ts'
import { builtinSeccomp, resolveSeccomp, seccompId } from '../sandbox/seccomp.ts'
import type { Snapshot, SnapshotIdentity, SnapshotStore } from './snapshot-store.ts'
import { warmUp } from './warmup.ts'
import { profileWorkingSet, WORKING_SET_VERSION } from './working-set.ts'

/** The process a function's container runs: the image's settings, overridden by the manifest. */
export function processSpecFor(image: ImageConfig, manifest: Manifest): ProcessSpec {
  const args = manifest.command ?? [...image.entrypoint, ...image.cmd]
  if (!args.length) {
    throw new InitlessError(
      'ERR_MANIFEST_INVALID',
      `${manifest.name}: the image has no CMD/ENTRYPOINT and the manifest no command`,
    )
  }
  const env = new Map<string, string>()
  for (const kv of image.env) {
    const i = kv.indexOf('=')
    if (i > 0) env.set(kv.slice(0, i), kv.slice(i + 1))
  }
  if (!env.has('PATH')) env.set('PATH', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
  for (const [k, v] of Object.entries(manifest.env)) env.set(k, v)
  const { uid, gid } = parseImageUser(image.user)
  return {
    args,
    env: [...env].map(([k, v]) => `${k}=${v}`),
    cwd: manifest.workdir ?? image.workdir,
    uid,
    gid,
  }
}

export interface HostVersions {
  readonly criuVersion: string
  readonly kernel: string
}

export function snapshotIdentity(
  fn: FunctionDef,
  image: ImageConfig,
  versions: HostVersions,
  /** Working-set prefetch enabled on this host (INITLESS_PREFETCH). */
  prefetch = true,
  /** seccomp.ts seccompId of the function's filter (a profile file's must be resolved first). */
  seccomp = seccompId(builtinSeccomp(fn.manifest.security.seccomp)),
): SnapshotIdentity {
  return {
    fn: fn.name,
    // Live fields (scaling, timeouts) change without a new snapshot (shared/versions.ts).
    manifestHash: manifestHash(bakedManifest(fn.manifest)),
    imageId: image.id,
    ...versions,
    layout: SANDBOX_LAYOUT_VERSION,
    prefetch: prefetch && profilesWorkingSet(fn.manifest) ? WORKING_SET_VERSION : 0,
    seccomp,
  }
}

export interface BakeResult {
  readonly snapshot: Snapshot
  /** False when a valid snapshot for the same inputs already existed. */
  readonly baked: boolean
}

export interface Baker {
  /** The identity a snapshot of this function and image has on this host. */
  identity(fn: FunctionDef, image: ImageConfig): Promise<SnapshotIdentity>
  bake(
    fn: FunctionDef,
    image: ImageConfig,
    opts?: { force?: boolean; onProgress?: (msg: string) => void },
  ): Promise<BakeResult>
}

/** Only snapshots a lazy restore may use get a working-set profile (`auto` may pick lazy). */
export function profilesWorkingSet(m: Manifest): boolean {
  return m.restore.policy === 'lazy' || m.restore.policy === 'auto'
}

export interface BakerDeps {
  readonly stateDir: string
  readonly docker: Pick<DockerEngine, 'exportRootfs'>
  readonly runc: Runc
  readonly criu: Criu
  readonly sandboxes: SandboxManager
  readonly store: SnapshotStore
  readonly versions: () => Promise<HostVersions>
  readonly logger: Logger
  /**
   * Pause after warm-up (and after restore.checkpointSignal) so runtimes finish deferred work (GC,
   * JIT queues) before the dump.
   */
  readonly settleMs?: number
  /** Profile the working set of lazily restorable snapshots (working-set.ts); default true. */
  readonly prefetch?: boolean
}

async function failWith(code: ErrorCode, sb: Sandbox, fn: string, err: unknown): Promise<never> {
  const output = tail(await readFile(sb.logFile, 'utf8').catch(() => ''), 15)
  throw new InitlessError(
    code,
    `${fn}: ${errorMessage(err)}${output ? `\n--- last output of ${fn}:\n${output}` : '\n(the function printed nothing)'}`,
    { cause: err, details: { fn, output } },
  )
}

/**
 * Boot the function in its sandbox, wait until it is ready, warm it up, let it settle and
 * checkpoint it into `imagesDir`. Returns how many warm-up requests it answered.
 */
async function bootAndCheckpoint(
  deps: Pick<BakerDeps, 'runc' | 'settleMs'>,
  sandbox: Sandbox,
  fn: FunctionDef,
  imagesDir: string,
  progress: (msg: string) => void,
): Promise<number> {
  const m = fn.manifest
  const fail = (code: ErrorCode) => (err: unknown) => failWith(code, sandbox, fn.name, err)
  progress('booting')
  await deps.runc.run(sandbox.id, {
    bundle: sandbox.bundle,
    outputFile: sandbox.logFile,
    pidFile: sandbox.pidFile,
  })
  const pid = await readPidFile(sandbox.pidFile)
  const isAlive = () => isProcessAlive(pid)
  const readyMs = await waitReady(sandbox.netns.ip, m.port, {
    path: m.readiness.path,
    expect: m.readiness.expect,
    timeoutMs: m.readiness.timeout,
    intervalMs: m.readiness.interval,
    isAlive,
  }).catch(fail('ERR_BAKE_NOT_READY'))
  progress(`ready after ${Math.round(readyMs)} ms; warming up`)
  const warmupRequests = await warmUp(m, sandbox.netns.ip, isAlive).catch(fail('ERR_BAKE_WARMUP_FAILED'))
  const signal = m.restore.checkpointSignal
  if (signal) {
    try {
      process.kill(pid, signal)
    } catch (err) {
      await fail('ERR_BAKE_WARMUP_FAILED')(err)
    }
    progress(`sent ${signal} before the checkpoint`)
  }
  await new Promise((r) => setTimeout(r, deps.settleMs ?? 600))
  if (!isAlive()) await fail('ERR_BAKE_WARMUP_FAILED')(new Error('the process exited after warm-up'))
  progress(`${warmupRequests} warm-up requests done; checkpointing`)
  await deps.runc
    .checkpoint(sandbox.id, { imagePath: imagesDir, workPath: sandbox.criuWorkDir })
    .catch(fail('ERR_BAKE_CHECKPOINT_FAILED'))
  return warmupRequests
}

/**
 * Working-set prefetch (working-set.ts). A profile that fails costs only the prefetch: the
 * snapshot is kept as dumped (and a snapshot that does not restore is caught on first use).
 */
async function profile(
  deps: BakerDeps,
  log: Logger,
  fn: FunctionDef,
  image: ImageConfig,
  rootfs: string,
  pending: { imagesDir: string; upperDir: string },
  progress: (msg: string) => void,
): Promise<number | undefined> {
  const t0 = performance.now()
  progress('profiling the working set (lazy restores + warm-up)')
  try {
    const { pages, perRound, gapPages } = await profileWorkingSet(deps, {
      fn,
      process: processSpecFor(image, fn.manifest),
      rootfs,
      ...pending,
    })
    progress(
      `working set: ${pages} pages (${formatBytes(pages * 4096)}) restore eagerly, ${perRound.length} rounds (${perRound.join(' + ')}) and ${gapPages} in gaps, in ${Math.round(performance.now() - t0)} ms`,
    )
    return pages
  } catch (err) {
    log.warn(
      { fn: fn.name, err: errorMessage(err) },
      'working-set profiling failed; snapshot kept without it',
    )
    return undefined
  }
}

export function createBaker(deps: BakerDeps): Baker {
  const log = deps.logger.child({ module: 'bake' })

  return {
    async identity(fn, image) {
      const { id } = await resolveSeccomp(fn)
      return snapshotIdentity(fn, image, await deps.versions(), deps.prefetch !== false, id)
    },

    async bake(fn, image, opts = {}) {
      const versions = await deps.versions()
      const seccomp = await resolveSeccomp(fn)
      const identity = snapshotIdentity(fn, image, versions, deps.prefetch !== false, seccomp.id)
      if (!opts.force) {
        const existing = await deps.store.find(identity)
        if (existing) return { snapshot: existing, baked: false }
      }
      const started = performance.now()
      const progress = (msg: string) => {
        opts.onProgress?.(msg)
        log.info({ fn: fn.name }, msg)
      }
      const rootfs = await ensureImageRootfs(deps.stateDir, image.id, (id, dir) =>
        deps.docker.exportRootfs(id, dir),
      )
      await touchImageRootfs(deps.stateDir, image.id)
      const m = fn.manifest
      const pending = await deps.store.begin(identity)
      let sb: Sandbox | undefined
      try {
        sb = await deps.sandboxes.prepare({
          id: `bake-${fn.name}-${randomBytes(4).toString('hex')}`,
          fn: fn.name,
          lowers: [rootfs],
          process: processSpecFor(image, m),
          ...sandboxLimits(m),
          forRestore: false,
          ...(seccomp.profile ? { seccomp: seccomp.profile } : {}),
        })
        const warmupRequests = await bootAndCheckpoint(deps, sb, fn, pending.imagesDir, progress)
        // The namespace must go (CRIU leaves its network lock in it); the files the function wrote
        // stay with the snapshot, as the top layer every restore mounts.
        await deps.sandboxes.destroy(sb, { keepUpperAt: pending.upperDir })
        sb = undefined
        const workingSetPages =
          identity.prefetch > 0 ? await profile(deps, log, fn, image, rootfs, pending, progress) : undefined
        const snapshot = await pending.commit({
          ...identity,
          bakeMs: performance.now() - started,
          warmupRequests,
          createdAt: Date.now(),
          port: m.port,
          ...(workingSetPages === undefined ? {} : { workingSetPages }),
        })
        progress(`snapshot ${snapshot.meta.key} stored (${snapshot.meta.sizeBytes} bytes)`)
        return { snapshot, baked: true }
      } catch (err) {
        if (sb)
          await deps.sandboxes
            .destroy(sb)
            .catch((e: unknown) => log.error({ err: errorMessage(e) }, 'bake cleanup failed'))
        await pending.discard()
        if (isInitlessError(err)) throw err
        throw new InitlessError('ERR_BAKE_CHECKPOINT_FAILED', `${fn.name}: ${errorMessage(err)}`, {
          cause: err,
        })
      }
    },
  }
}
