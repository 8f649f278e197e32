/**
 * The `docker` runtime: Docker's own checkpoint/restore (`docker checkpoint create` /
 * `docker start --checkpoint`), kept as the reference the benchmarks compare runc + CRIU against.
 * Never chosen by a restore policy; only a job that asks for runtime `docker` gets it.
 *
 * A checkpoint restores only into the container it was taken from (docker-template.ts): a restore
 * starts the function's template container from its checkpoint, and a stop is `docker stop`
 * without removal, so the checkpoint can be restored again. Consequence: one docker-runtime
 * instance per function at a time. Nothing is stored outside Docker.
 */
import type { Logger } from 'pino'
import { InitlessError, errorMessage } from '../../shared/errors.ts'
import { waitReady } from '../adapters/probe.ts'
import { createCopySweeper, type CopySweeper } from './containerd-copies.ts'
import {
  checkpointTemplate,
  DOCKER_CHECKPOINT_LABEL,
  DOCKER_CHECKPOINT_NAME,
  templateKey,
  watchRunning,
  type DockerCheckpointEngine,
  type Template,
  type TemplateDeps,
} from './docker-template.ts'
import type { Runtime, StartRequest, StartedInstance } from './runtimes.ts'

export { CONTAINERD_TMP, removeContainerdCopies } from './containerd-copies.ts'
export {
  DOCKER_CHECKPOINT_LABEL,
  DOCKER_CHECKPOINT_NAME,
  TEMPLATE_PREFIX,
  templateName,
  type DockerCheckpointEngine,
} from './docker-template.ts'

/** Restore probing: the socket is usually there at once (as for the runc runtimes). */
const RESTORE_PROBE_INTERVAL_MS = 1

/**
 * moby#42900: `docker checkpoint create` leaves the checkpoint's tar in containerd's content store
 * until containerd's next garbage collection (its interval grows with the average collection time:
 * 0.5 s on a quiet host, seconds on a busy one), and a start from that checkpoint uploads a
 * byte-identical tar (same digest), which containerd refuses with "already exists" until then.
 * The refusal changes nothing, so the start is tried again until the blob is collected.
 */
const LINGERING_CHECKPOINT = /failed to upload checkpoint to containerd: .*already exists/
const LINGERING_CHECKPOINT_WAIT_MS = 20_000
const LINGERING_CHECKPOINT_RETRY_MS = [50, 100, 200, 400, 800, 1000]

/** Start from a checkpoint, waiting out moby#42900; resolves with when the successful call began. */
async function startPastLingeringBlob(
  ctx: Ctx,
  template: Template,
  waitMs = LINGERING_CHECKPOINT_WAIT_MS,
): Promise<{ ip: string; t0: number }> {
  const began = performance.now()
  for (let attempt = 0; ; attempt++) {
    const t0 = performance.now()
    try {
      const { ip } = await ctx.copies.tracked(() =>
        ctx.docker.startFromCheckpoint(template.containerId, DOCKER_CHECKPOINT_NAME),
      )
      if (attempt > 0) {
        ctx.log.info(
          { container: template.name, attempts: attempt + 1, waitedMs: Math.round(t0 - began) },
          "docker restore waited for containerd to collect the checkpoint's copy (moby#42900)",
        )
      }
      return { ip, t0 }
    } catch (err) {
      const elapsed = performance.now() - began
      if (!LINGERING_CHECKPOINT.test(errorMessage(err)) || elapsed >= waitMs) throw err
      const pause =
        LINGERING_CHECKPOINT_RETRY_MS[Math.min(attempt, LINGERING_CHECKPOINT_RETRY_MS.length - 1)]!
      await new Promise((r) => setTimeout(r, Math.min(pause, waitMs - elapsed)))
    }
  }
}

export interface DockerCheckpointDeps {
  readonly docker: DockerCheckpointEngine
  readonly logger: Logger
  /** Pause after warm-up so runtimes finish deferred work before the dump (bake.ts's settle). */
  readonly settleMs?: number
  /** containerd's checkpoint copies (default: removed from its temp dir). */
  readonly copies?: CopySweeper
  /** How long a start waits out moby#42900 (default 20 s). */
  readonly lingeringCheckpointWaitMs?: number
}

export interface DockerCheckpointRuntime extends Runtime {
  /** Stop an instance's container, keeping it (and its checkpoint) for the next restore. */
  stop(inst: StartedInstance): Promise<void>
  /** Remove the template containers (of one function, or all) with their checkpoints. */
  discard(fn?: string): Promise<void>
}

/** Per function, the template its checkpoint lives in, prepared on first use. */
function createTemplates(deps: TemplateDeps, log: Logger) {
  const templates = new Map<string, Template>()
  const remove = async (fn: string): Promise<void> => {
    const t = templates.get(fn)
    if (!t) return
    templates.delete(fn)
    await deps.docker.removeContainer(t.containerId)
    log.info({ fn, container: t.name }, 'docker checkpoint template removed')
  }
  return {
    get: (fn: string) => templates.get(fn),
    names: () => [...templates.keys()],
    remove,
    forget: (fn: string) => void templates.delete(fn),
    async for(req: StartRequest): Promise<Template> {
      const key = templateKey(req.fn, req.image)
      const cached = templates.get(req.fn.name)
      if (cached?.key === key) return cached
      // Another image or manifest: the old checkpoint can never be restored again.
      await remove(req.fn.name)
      const t = await checkpointTemplate(deps, req.fn, req.image, req.hostLabel, log)
      templates.set(req.fn.name, t)
      return t
    },
    async exists(containerId: string): Promise<boolean> {
      const list = await deps.docker.listContainers(`${DOCKER_CHECKPOINT_LABEL}=1`)
      return list.some((c) => c.id === containerId)
    },
  }
}

type Templates = ReturnType<typeof createTemplates>

/** What the runtime's steps share. */
interface Ctx {
  readonly docker: DockerCheckpointEngine
  readonly copies: CopySweeper
  readonly templates: Templates
  readonly log: Logger
  readonly lingeringWaitMs?: number
}

/**
 * Start the template from its checkpoint; a template that vanished is made again once. `held`
 * names the template in use as soon as there is one (a failure after that is the template's).
 */
async function restoreTemplate(
  ctx: Ctx,
  req: StartRequest,
  held: { template?: Template },
): Promise<{ ip: string; t0: number }> {
  const start = async () => {
    const template = (held.template = await ctx.templates.for(req))
    return startPastLingeringBlob(ctx, template, ctx.lingeringWaitMs)
  }
  try {
    return await start()
  } catch (err) {
    if (!held.template || (await ctx.templates.exists(held.template.containerId))) throw err
    // Removed by hand, or by reconcile of a restarted executor: make a new one and restore that.
    ctx.log.warn(
      { fn: req.fn.name, container: held.template.name },
      'docker checkpoint template vanished; recreating',
    )
    ctx.templates.forget(req.fn.name)
    return start()
  }
}

/** A template that does not restore is not tried again (as a broken snapshot). */
async function failedRestore(ctx: Ctx, fn: string, template: Template, err: unknown): Promise<never> {
  const logs = await ctx.docker.containerLogs(template.containerId, 15).catch(() => '')
  await ctx.templates.remove(fn).catch(() => undefined)
  await ctx.copies.sweep()
  throw new InitlessError(
    'ERR_RESTORE_FAILED',
    `${fn}: docker restore failed: ${errorMessage(err)}${logs.trim() ? `\n${logs.trim()}` : ''}`,
    { cause: err },
  )
}

/** Create the `docker` runtime (one template container and one live instance per function). */
export function createDockerCheckpointRuntime(deps: DockerCheckpointDeps): DockerCheckpointRuntime {
  const log = deps.logger.child({ module: 'docker-checkpoint' })
  const { docker } = deps
  const copies = deps.copies ?? createCopySweeper({ logger: log })
  const templates = createTemplates({ docker, copies, settleMs: deps.settleMs }, log)
  const ctx: Ctx = { docker, copies, templates, log, lingeringWaitMs: deps.lingeringCheckpointWaitMs }
  /** fn -> id of the instance holding (or starting from) its template. */
  const busy = new Map<string, string>()

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
      const held: { template?: Template } = {}
      try {
        const restored = await restoreTemplate(ctx, req, held)
        const template = held.template!
        const t1 = performance.now()
        const watch = watchRunning(docker, template.containerId)
        try {
          await waitReady(restored.ip, m.port, {
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
          ip: restored.ip,
          port: m.port,
          containerId: template.containerId,
          pooled: false,
          phases: { sandboxMs: 0, restoreMs: t1 - restored.t0, readyMs: t2 - t1 },
          snapshotBytes: 0,
        }
      } catch (err) {
        busy.delete(fn)
        const template = held.template
        // Preparation errors carry their own code (ERR_BAKE_*) and left nothing behind.
        if (!template || templates.get(fn) !== template) throw err
        return failedRestore(ctx, fn, template, err)
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
        if (templates.get(inst.fn)?.containerId === inst.containerId) await templates.remove(inst.fn)
        else if (inst.containerId) await docker.removeContainer(inst.containerId)
      } finally {
        if (busy.get(inst.fn) === inst.id) busy.delete(inst.fn)
        await copies.sweep()
      }
    },

    async discard(fn) {
      for (const name of templates.names()) {
        if (fn !== undefined && name !== fn) continue
        await templates.remove(name)
        busy.delete(name)
      }
      await copies.sweep()
    },
  }
}
