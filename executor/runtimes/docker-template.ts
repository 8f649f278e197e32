/**
 * The docker runtime's template containers. Docker 20.10 refuses `--checkpoint-dir` on start
 * ("custom checkpointdir is not supported"), so a checkpoint can only be restored into the
 * container it was taken from: each function gets ONE template container,
 * `initless-ckpt-<fn>-<image short id>`, prepared lazily on first use — created like the boot
 * runtime's container, started, probed for readiness, warmed up as a bake does, and checkpointed
 * with `Exit: true`. Templates are labelled with the host (reconcile removes them after a crash).
 */
import type { Logger } from 'pino'
import { InitlessError, errorMessage, isInitlessError, type ErrorCode } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { manifestHash } from '../../shared/manifest.ts'
import type { DockerEngine, ImageConfig } from '../adapters/docker.ts'
import { waitReady } from '../adapters/probe.ts'
import { warmUp } from '../snapshots/warmup.ts'
import type { CopySweeper } from './containerd-copies.ts'

/** Label on every template container (value `1`). */
export const DOCKER_CHECKPOINT_LABEL = 'initless.docker-checkpoint'
/** The checkpoint's name inside its container. */
export const DOCKER_CHECKPOINT_NAME = 'initless'
export const TEMPLATE_PREFIX = 'initless-ckpt-'

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

export interface Template {
  /** Image id + manifest hash: the inputs the checkpoint was taken from. */
  readonly key: string
  readonly name: string
  readonly containerId: string
  readonly hostLabel: string
}

/** `initless-ckpt-<fn>-<first 12 hex digits of the image id>`. */
export function templateName(fn: string, imageId: string): string {
  return `${TEMPLATE_PREFIX}${fn}-${imageId.replace(/^sha256:/, '').slice(0, 12)}`
}

export function templateKey(fn: FunctionDef, image: ImageConfig): string {
  return `${image.id}/${manifestHash(fn.manifest)}`
}

/** Polls dockerd in the background: waitReady's `isAlive` is synchronous. */
export function watchRunning(
  docker: Pick<DockerEngine, 'containerRunning'>,
  id: string,
): { isAlive: () => boolean; stop: () => void } {
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

export interface TemplateDeps {
  readonly docker: DockerCheckpointEngine
  readonly copies: Pick<CopySweeper, 'tracked'>
  /** Pause after warm-up so runtimes finish deferred work before the dump (bake.ts's settle). */
  readonly settleMs?: number
}

async function failWith(
  docker: Pick<DockerEngine, 'containerLogs'>,
  code: ErrorCode,
  fn: string,
  id: string,
  err: unknown,
): Promise<never> {
  const output = (await docker.containerLogs(id, 15).catch(() => '')).trim()
  throw new InitlessError(
    code,
    `${fn}: docker checkpoint: ${errorMessage(err)}${output ? `\n--- last output of ${fn}:\n${output}` : ''}`,
    { cause: err, details: { fn, output } },
  )
}

/**
 * Remove this host's leftovers of `fn`'s template (a previous process without reconcile, an older
 * image); a template of another executor sharing this Docker engine is not ours to remove.
 */
async function removeLeftovers(docker: DockerCheckpointEngine, fn: string, name: string, hostLabel: string) {
  for (const c of await docker.listContainers(`${DOCKER_CHECKPOINT_LABEL}=1`)) {
    const mine = c.labels['initless.host'] === hostLabel
    if (c.name === name && !mine)
      throw new InitlessError(
        'ERR_RESTORE_FAILED',
        `${fn}: docker runtime: container ${name} belongs to host ${c.labels['initless.host'] ?? '?'}`,
      )
    if (mine && c.labels['initless.fn'] === fn) await docker.removeContainer(c.id)
  }
}

/** Boot, warm up and checkpoint a new template container; on failure nothing is left. */
export async function checkpointTemplate(
  deps: TemplateDeps,
  fn: FunctionDef,
  image: ImageConfig,
  hostLabel: string,
  log: Logger,
): Promise<Template> {
  const { docker } = deps
  const m = fn.manifest
  const started = performance.now()
  const name = templateName(fn.name, image.id)
  await removeLeftovers(docker, fn.name, name, hostLabel)
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
  const fail = (code: ErrorCode) => (err: unknown) => failWith(docker, code, fn.name, id, err)
  const watch = watchRunning(docker, id)
  try {
    const { ip } = await docker.startContainer(id)
    await waitReady(ip, m.port, {
      path: m.readiness.path,
      expect: m.readiness.expect,
      timeoutMs: m.readiness.timeout,
      intervalMs: m.readiness.interval,
      isAlive: watch.isAlive,
    }).catch(fail('ERR_BAKE_NOT_READY'))
    const warmupRequests = await warmUp(fn.manifest, ip, watch.isAlive).catch(fail('ERR_BAKE_WARMUP_FAILED'))
    // The same preparation as a snapshot's bake (bake.ts), so the two paths restore the same state.
    const signal = m.restore.checkpointSignal
    if (signal) await docker.signalContainer(id, signal).catch(fail('ERR_BAKE_WARMUP_FAILED'))
    await new Promise((r) => setTimeout(r, deps.settleMs ?? 600))
    if (!(await docker.containerRunning(id)))
      await fail('ERR_BAKE_WARMUP_FAILED')(new Error('the process exited after warm-up'))
    watch.stop()
    // Exit: true — the container stops; its checkpoint stays with it.
    await deps.copies
      .tracked(() => docker.checkpointContainer(id, DOCKER_CHECKPOINT_NAME))
      .catch(fail('ERR_BAKE_CHECKPOINT_FAILED'))
    log.info(
      { fn: fn.name, container: name, warmupRequests, ms: Math.round(performance.now() - started) },
      'docker checkpoint prepared',
    )
    return { key: templateKey(fn, image), name, containerId: id, hostLabel }
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
