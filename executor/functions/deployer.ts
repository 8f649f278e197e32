/**
 * One deploy job: unpack the version's build context, build its image (and push it to the image
 * registry when one is configured: the other hosts pull it by digest), bake its snapshot, record
 * both in the function registry, activate it, and drop versions beyond the retention setting. A
 * step that fails records the version as `failed` with the step, the error and the function's
 * last output lines; the active version is untouched and keeps serving.
 */
import type { Logger } from 'pino'
import type { DeployJobData, DeployJobResult } from '../../shared/deploy-queue.ts'
import { errorMessage, InitlessError, isInitlessError } from '../../shared/errors.ts'
import type {
  DeployFailure,
  DeployStep,
  FunctionRegistry,
  FunctionVersion,
} from '../../shared/function-registry.ts'
import type { Baker } from '../snapshots/bake.ts'
import type { ImageBuilder } from '../snapshots/build.ts'
import type { ImagePublisher } from '../snapshots/publish.ts'
import type { FunctionSource } from './function-source.ts'

export interface DeployerDeps {
  readonly hostId: string
  readonly functions: Pick<FunctionRegistry, 'get' | 'putVersion' | 'activate' | 'removeVersions'>
  readonly source: Pick<FunctionSource, 'materialize'>
  readonly builder: Pick<ImageBuilder, 'build'>
  readonly baker: Pick<Baker, 'bake'>
  /** Pushes the built image to INITLESS_IMAGE_REGISTRY; absent: images stay on the host that built them. */
  readonly publisher?: ImagePublisher
  /** Versions kept per function, the active one included (INITLESS_KEEP_VERSIONS). */
  readonly keepVersions: number
  readonly logger: Logger
  readonly now?: () => number
}

/** Lines of build output a failure report carries. */
const OUTPUT_LINES = 20

/** A deploy that failed at `step`: carries the DeployFailure the job reports. */
export class DeployStepError extends Error {
  readonly failure: DeployFailure
  constructor(failure: DeployFailure) {
    super(failure.message)
    this.name = 'DeployStepError'
    this.failure = failure
  }
}

/** The versions beyond `keep` (newest first, the active one always kept). */
export function versionsToDrop(
  versions: readonly FunctionVersion[],
  active: string | undefined,
  keep: number,
): string[] {
  const others = versions.filter((v) => v.version !== active)
  return others.slice(Math.max(0, keep - (active === undefined ? 0 : 1))).map((v) => v.version)
}

export function createDeployer(deps: DeployerDeps) {
  const log = deps.logger.child({ module: 'deployer' })
  const now = deps.now ?? Date.now

  return {
    async deploy(job: DeployJobData): Promise<DeployJobResult> {
      const jlog = log.child({ fn: job.fn, version: job.version, traceId: job.traceId })
      const current = async () =>
        (await deps.functions.get(job.fn))?.versions.find((v) => v.version === job.version)
      const v = await current()
      if (!v)
        throw new DeployStepError({
          step: 'upload',
          code: 'ERR_VERSION_NOT_FOUND',
          message: `version ${job.version} of ${job.fn} is not in the function registry`,
        })
      const fail = async (step: DeployStep, err: unknown, output?: string): Promise<never> => {
        const failure: DeployFailure = {
          step,
          code: isInitlessError(err) ? err.code : 'ERR_INTERNAL',
          message: errorMessage(err).split('\n--- last output')[0] ?? errorMessage(err),
          ...(output ? { output } : {}),
        }
        jlog.warn({ step, code: failure.code, err: failure.message }, 'deploy failed')
        const latest = (await current().catch(() => undefined)) ?? v
        await deps.functions
          .putVersion(job.fn, { ...latest, state: 'failed', failure })
          .catch((e: unknown) => jlog.warn({ err: errorMessage(e) }, 'failed version not recorded'))
        throw new DeployStepError(failure)
      }

      const def = await deps.source.materialize(job.fn, v).catch((err: unknown) => fail('upload', err))
      const lines: string[] = []
      const collect = (line: string) => {
        lines.push(line)
        if (lines.length > 200) lines.shift()
      }
      jlog.info('deploy started')
      const built = await deps.builder
        .build(def, { onProgress: collect })
        .catch((err: unknown) => fail('build', err, lines.slice(-OUTPUT_LINES).join('\n')))
      const publisher = deps.publisher
      const digest = publisher
        ? await publisher.publish(built).catch((err: unknown) => fail('publish', err))
        : undefined
      let snapshotKey = ''
      let baked = false
      let bakeMs = 0
      if (def.manifest.restore.policy !== 'boot') {
        const t0 = performance.now()
        const bake = await deps.baker
          .bake(def, built.image, { onProgress: collect })
          .catch((err: unknown) => {
            const output =
              isInitlessError(err) && typeof err.details.output === 'string' ? err.details.output : ''
            return fail('bake', err, output || undefined)
          })
        snapshotKey = bake.snapshot.meta.key
        baked = bake.baked
        bakeMs = Math.round(performance.now() - t0)
      }
      // The latest record: a live-field update may have come in during the build.
      const { failure: _stale, ...latest } = (await current()) ?? v
      await deps.functions.putVersion(job.fn, {
        ...latest,
        state: 'ready',
        image: { tag: built.tag, id: built.image.id, ...(digest ? { digest } : {}) },
        bakedOn: { ...latest.bakedOn, [deps.hostId]: { at: now(), snapshotKey } },
      })
      if (!(await deps.functions.activate(job.fn, job.version)))
        await fail(
          'activate',
          new InitlessError('ERR_VERSION_NOT_FOUND', `${job.fn} was deleted during its deploy`),
        )
      const record = await deps.functions.get(job.fn)
      const removed = record ? versionsToDrop(record.versions, record.active, deps.keepVersions) : []
      if (removed.length) await deps.functions.removeVersions(job.fn, removed)
      const result: DeployJobResult = {
        fn: job.fn,
        version: job.version,
        hostId: deps.hostId,
        image: built.tag,
        ...(digest ? { digest } : {}),
        built: built.built,
        baked,
        buildMs: Math.round(built.ms),
        bakeMs,
        removed,
      }
      jlog.info({ ...result }, 'version activated')
      return result
    },
  }
}

export type Deployer = ReturnType<typeof createDeployer>
