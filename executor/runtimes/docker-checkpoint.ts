/**
 * The `docker` runtime: Docker's own checkpoint/restore (`docker checkpoint create` /
 * `docker start --checkpoint`), kept as the reference the benchmarks compare runc + CRIU against.
 * Never chosen by a restore policy; only a job that asks for runtime `docker` gets it.
 *
 * Docker 20.10 refuses `--checkpoint-dir` on start ("custom checkpointdir is not supported"), so a
 * checkpoint can only be restored into the container it was taken from. Each function therefore
 * gets ONE template container, `initless-ckpt-<fn>-<image short id>`, prepared lazily on first use:
 * created like the boot runtime's container, started, probed for readiness, warmed up as bake.ts
 * does, and checkpointed with `Exit: true`. A restore starts that container from its checkpoint; a
 * stop is `docker stop` without removal, so the checkpoint can be restored again. Consequence: one
 * docker-runtime instance per function at a time. Nothing is stored outside Docker: templates are
 * labelled with the host (reconcile removes them after a crash) and rebuilt on demand.
 *
 * containerd 1.6 (Debian 12's) leaves a full copy of the checkpoint in its temp dir
 * (`/tmp/ctrd-checkpoint*`) after every checkpoint and every restore: ~1 GB per flask-table cold
 * start, 60 GB over two days of benchmarks before the disk filled. This runtime removes the copies
 * its own calls left (see `removeContainerdCopies`).
 */
import { readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { InitlessError, errorMessage, isInitlessError, type ErrorCode } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { manifestHash } from '../../shared/manifest.ts'
import type { DockerEngine, ImageConfig } from '../adapters/docker.ts'
import { waitReady } from '../adapters/probe.ts'
import { warmUp } from '../snapshots/warmup.ts'
import type { Runtime, StartRequest, StartedInstance } from './runtimes.ts'

/** Label on every template container (value `1`). */
export const DOCKER_CHECKPOINT_LABEL = 'initless.docker-checkpoint'
/** The checkpoint's name inside its container. */
export const DOCKER_CHECKPOINT_NAME = 'initless'
export const TEMPLATE_PREFIX = 'initless-ckpt-'

/** Restore probing: the socket is usually there at once (as for the runc runtimes). */
const RESTORE_PROBE_INTERVAL_MS = 1
/** How often a starting container is checked for having exited (dockerd inspect calls). */
const LIVENESS_POLL_MS = 200

export type DockerCheckpointEngine = Pick<
  DockerEngine,
  | 'createContainer'
  | 'startContainer'
  | 'checkpointContainer'
  | 'startFromCheckpoint'
  | 'stopContainer'
  | 'signalContainer'
  | 'removeContainer'
  | 'containerRunning'
  | 'containerLogs'
  | 'listContainers'
>

export interface DockerCheckpointDeps {
  readonly docker: DockerCheckpointEngine
  readonly logger: Logger
  /** Pause after warm-up so runtimes finish deferred work before the dump (bake.ts's settle). */
  readonly settleMs?: number
}

export interface DockerCheckpointRuntime extends Runtime {
  /** Stop an instance's container, keeping it (and its checkpoint) for the next restore. */
  stop(inst: StartedInstance): Promise<void>
  /** Remove the template containers (of one function, or all) with their checkpoints. */
  discard(fn?: string): Promise<void>
}

interface Template {
  /** Image id + manifest hash: the inputs the checkpoint was taken from. */
  readonly key: string
  readonly name: string
  readonly containerId: string
  readonly hostLabel: string
}

/** Where containerd (started without TMPDIR) makes its checkpoint copies. */
export const CONTAINERD_TMP = '/tmp'
const CONTAINERD_COPY_PREFIX = 'ctrd-checkpoint'
/** A copy this old is no restore's any more (flask-table's takes ~30 s): left by a crash. */
const CONTAINERD_COPY_STALE_MS = 10 * 60_000

/**
 * Remove containerd's leftover checkpoint copies: those last written from `sinceMs` (epoch ms) on,
 * i.e. by the calls this runtime made since then (call it when none of its calls is running), and
 * any older than ten minutes. Returns how many it removed.
 */
export async function removeContainerdCopies(sinceMs: number, dir = CONTAINERD_TMP): Promise<number> {
  let removed = 0
  const now = Date.now()
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith(CONTAINERD_COPY_PREFIX)) continue
    const path = join(dir, name)
    const st = await stat(path).catch(() => undefined)
    if (!st?.isDirectory()) continue
    if (st.mtimeMs < sinceMs && now - st.mtimeMs < CONTAINERD_COPY_STALE_MS) continue
    await rm(path, { recursive: true, force: true })
    removed++
  }
  return removed
}

/** `initless-ckpt-<fn>-<first 12 hex digits of the image id>`. */
export function templateName(fn: string, imageId: string): string {
  return `${TEMPLATE_PREFIX}${fn}-${imageId.replace(/^sha256:/, '').slice(0, 12)}`
}

/** Create the `docker` runtime (one template container and one live instance per function). */
export function createDockerCheckpointRuntime(deps: DockerCheckpointDeps): DockerCheckpointRuntime {
  const log = deps.logger.child({ module: 'docker-checkpoint' })
  const docker = deps.docker
  const templates = new Map<string, Template>()
  /** fn -> id of the instance holding (or starting from) its template. */
  const busy = new Map<string, string>()
  /** Checkpoint and restore calls running, and when the earliest unswept one began. */
  let calls = 0
  let unsweptSince: number | undefined

  /** Run a Docker checkpoint or restore call, remembering that it may leave a containerd copy. */
  async function tracked<T>(call: () => Promise<T>): Promise<T> {
    unsweptSince ??= Date.now()
    calls++
    try {
      return await call()
    } finally {
      calls--
    }
  }

  /**
   * Remove the copies containerd left for the calls made since the last sweep, once none runs. Called
   * when an instance stops, not after the restore: the benchmark times this runtime's restores.
   */
  async function sweepCopies(): Promise<void> {
    if (calls > 0 || unsweptSince === undefined) return
    const since = unsweptSince
    unsweptSince = undefined
    const n = await removeContainerdCopies(since).catch((err: unknown) => {
      log.warn({ err: errorMessage(err) }, "removing containerd's checkpoint copies failed")
      return 0
    })
    if (n) log.debug({ removed: n }, "removed containerd's checkpoint copies")
  }

  /** Polls dockerd in the background: waitReady's `isAlive` is synchronous. */
  function watchRunning(id: string): { isAlive: () => boolean; stop: () => void } {
    let alive = true
    const timer = setInterval(() => {
      void docker.containerRunning(id).then(
        (running) => {
          if (!running) alive = false
        },
        () => undefined,
      )
    }, LIVENESS_POLL_MS)
    timer.unref()
    return { isAlive: () => alive, stop: () => clearInterval(timer) }
  }

  async function failWith(code: ErrorCode, fn: string, id: string, err: unknown): Promise<never> {
    const output = (await docker.containerLogs(id, 15).catch(() => '')).trim()
    throw new InitlessError(
      code,
      `${fn}: docker checkpoint: ${errorMessage(err)}${output ? `\n--- last output of ${fn}:\n${output}` : ''}`,
      { cause: err, details: { fn, output } },
    )
  }

  async function removeTemplate(fn: string): Promise<void> {
    const t = templates.get(fn)
    if (!t) return
    templates.delete(fn)
    await docker.removeContainer(t.containerId)
    log.info({ fn, container: t.name }, 'docker checkpoint template removed')
  }

  /** Boot, warm up and checkpoint a new template container. */
  async function prepare(fn: FunctionDef, image: ImageConfig, hostLabel: string): Promise<Template> {
    const m = fn.manifest
    const started = performance.now()
    const name = templateName(fn.name, image.id)
    // Leftovers of this host (a previous process without reconcile, an older image) go; a template
    // of another executor sharing this Docker engine is not ours to remove.
    for (const c of await docker.listContainers(`${DOCKER_CHECKPOINT_LABEL}=1`)) {
      const mine = c.labels['initless.host'] === hostLabel
      if (c.name === name && !mine)
        throw new InitlessError(
          'ERR_RESTORE_FAILED',
          `${fn.name}: docker runtime: container ${name} belongs to host ${c.labels['initless.host'] ?? '?'}`,
        )
      if (mine && c.labels['initless.fn'] === fn.name) await docker.removeContainer(c.id)
    }
    const id = await docker.createContainer({
      name,
      image: image.id,
      ...(m.command ? { cmd: m.command } : {}),
      env: Object.entries(m.env).map(([k, v]) => `${k}=${v}`),
      memoryBytes: m.resources.memory,
      cpus: m.resources.cpus,
      pids: m.resources.pids,
      labels: {
        'initless.fn': fn.name,
        'initless.host': hostLabel,
        [DOCKER_CHECKPOINT_LABEL]: '1',
        'initless.image': image.id,
      },
    })
    const watch = watchRunning(id)
    try {
      const { ip } = await docker.startContainer(id)
      await waitReady(ip, m.port, {
        path: m.readiness.path,
        expect: m.readiness.expect,
        timeoutMs: m.readiness.timeout,
        intervalMs: m.readiness.interval,
        isAlive: watch.isAlive,
      }).catch((err: unknown) => failWith('ERR_BAKE_NOT_READY', fn.name, id, err))
      const warmupRequests = await warmUp(fn.manifest, ip, watch.isAlive).catch((err: unknown) =>
        failWith('ERR_BAKE_WARMUP_FAILED', fn.name, id, err),
      )
      // The same preparation as a snapshot's bake (bake.ts), so the two paths restore the same state.
      const signal = m.restore.checkpointSignal
      if (signal)
        await docker
          .signalContainer(id, signal)
          .catch((err: unknown) => failWith('ERR_BAKE_WARMUP_FAILED', fn.name, id, err))
      await new Promise((r) => setTimeout(r, deps.settleMs ?? 600))
      if (!(await docker.containerRunning(id)))
        await failWith('ERR_BAKE_WARMUP_FAILED', fn.name, id, new Error('the process exited after warm-up'))
      watch.stop()
      // Exit: true — the container stops; its checkpoint stays with it.
      await tracked(() => docker.checkpointContainer(id, DOCKER_CHECKPOINT_NAME)).catch((err: unknown) =>
        failWith('ERR_BAKE_CHECKPOINT_FAILED', fn.name, id, err),
      )
      log.info(
        { fn: fn.name, container: name, warmupRequests, ms: Math.round(performance.now() - started) },
        'docker checkpoint prepared',
      )
      return { key: `${image.id}/${manifestHash(m)}`, name, containerId: id, hostLabel }
    } catch (err) {
      await docker.removeContainer(id).catch(() => undefined)
      if (isInitlessError(err)) throw err
      throw new InitlessError(
        'ERR_BAKE_CHECKPOINT_FAILED',
        `${fn.name}: docker checkpoint: ${errorMessage(err)}`,
        {
          cause: err,
        },
      )
    } finally {
      watch.stop()
    }
  }

  async function templateFor(req: StartRequest): Promise<Template> {
    const key = `${req.image.id}/${manifestHash(req.fn.manifest)}`
    const cached = templates.get(req.fn.name)
    if (cached?.key === key) return cached
    // Another image or manifest: the old checkpoint can never be restored again.
    await removeTemplate(req.fn.name)
    const t = await prepare(req.fn, req.image, req.hostLabel)
    templates.set(req.fn.name, t)
    return t
  }

  async function exists(containerId: string): Promise<boolean> {
    const list = await docker.listContainers(`${DOCKER_CHECKPOINT_LABEL}=1`)
    return list.some((c) => c.id === containerId)
  }

  return {
    kind: 'docker',

    async start(req) {
      const fn = req.fn.name
      const m = req.fn.manifest
      const holder = busy.get(fn)
      if (holder !== undefined) {
        // Retryable (ERR_RESTORE_FAILED): the condition passes once that instance stops, and
        // another executor host has its own template container.
        throw new InitlessError(
          'ERR_RESTORE_FAILED',
          `${fn}: the docker runtime serves one instance per function (its checkpoint lives in ` +
            `one container); instance ${holder} is running`,
          { details: { fn, runningInstance: holder } },
        )
      }
      busy.set(fn, req.instanceId)
      let template: Template | undefined
      try {
        template = await templateFor(req)
        let t0 = performance.now()
        let ip: string
        try {
          ;({ ip } = await tracked(() =>
            docker.startFromCheckpoint(template!.containerId, DOCKER_CHECKPOINT_NAME),
          ))
        } catch (err) {
          if (await exists(template.containerId)) throw err
          // The template vanished (removed by hand, by reconcile of a restarted executor): make a
          // new one and restore that.
          log.warn({ fn, container: template.name }, 'docker checkpoint template vanished; recreating')
          templates.delete(fn)
          template = await templateFor(req)
          t0 = performance.now()
          ;({ ip } = await tracked(() =>
            docker.startFromCheckpoint(template!.containerId, DOCKER_CHECKPOINT_NAME),
          ))
        }
        const t1 = performance.now()
        const watch = watchRunning(template.containerId)
        try {
          await waitReady(ip, m.port, {
            path: m.readiness.path,
            expect: m.readiness.expect,
            timeoutMs: Math.min(m.readiness.timeout, 30_000),
            intervalMs: RESTORE_PROBE_INTERVAL_MS,
            isAlive: watch.isAlive,
          })
        } finally {
          watch.stop()
        }
        const t2 = performance.now()
        return {
          id: req.instanceId,
          fn,
          runtime: 'docker',
          ip,
          port: m.port,
          containerId: template.containerId,
          pooled: false,
          phases: { sandboxMs: 0, restoreMs: t1 - t0, readyMs: t2 - t1 },
          snapshotBytes: 0,
        }
      } catch (err) {
        busy.delete(fn)
        // Preparation errors carry their own code (ERR_BAKE_*) and left nothing behind.
        if (!template || templates.get(fn) !== template) throw err
        // A template that does not restore is not tried again (as a broken snapshot): the next
        // start prepares a fresh one.
        const logs = await docker.containerLogs(template.containerId, 15).catch(() => '')
        await removeTemplate(fn).catch(() => undefined)
        await sweepCopies()
        throw new InitlessError(
          'ERR_RESTORE_FAILED',
          `${fn}: docker restore failed: ${errorMessage(err)}${logs.trim() ? `\n${logs.trim()}` : ''}`,
          { cause: err },
        )
      }
    },

    async stop(inst) {
      try {
        if (inst.containerId) await docker.stopContainer(inst.containerId)
      } catch (err) {
        // State unknown: drop the template rather than restore into a container that may still run.
        log.warn(
          { fn: inst.fn, id: inst.id, err: errorMessage(err) },
          'docker stop failed; removing template',
        )
        if (templates.get(inst.fn)?.containerId === inst.containerId) await removeTemplate(inst.fn)
        else if (inst.containerId) await docker.removeContainer(inst.containerId)
      } finally {
        if (busy.get(inst.fn) === inst.id) busy.delete(inst.fn)
        await sweepCopies()
      }
    },

    async discard(fn) {
      for (const name of [...templates.keys()]) {
        if (fn !== undefined && name !== fn) continue
        await removeTemplate(name)
        busy.delete(name)
      }
      await sweepCopies()
    },
  }
}
