/**
 * A DeployQueue for unit tests whose "executor" does what executor/functions/deployer.ts records: the
 * version becomes `ready` with an image and is activated, or, when `fail` says so, `failed`
 * with a bake failure. It checks that the version and its build context were stored first.
 */
import { execFileSync } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { deployFailed, type DeployJobData, type DeployQueue } from './deploy-queue.ts'
import { InitlessError } from './errors.ts'
import type { FunctionRegistry } from './function-registry.ts'

export interface FakeDeployQueue extends DeployQueue {
  /** Every job run, in order. */
  readonly jobs: readonly DeployJobData[]
}

export function createFakeDeployQueue(
  functions: Pick<FunctionRegistry, 'get' | 'context' | 'putVersion' | 'activate'>,
  opts: {
    readonly fail?: (job: DeployJobData) => boolean
    /** Awaited before the job does anything: holds a deploy open. */
    readonly hold?: (job: DeployJobData) => Promise<void>
  } = {},
): FakeDeployQueue {
  const jobs: DeployJobData[] = []
  return {
    jobs,
    async deploy(job) {
      jobs.push(job)
      await opts.hold?.(job)
      const v = (await functions.get(job.fn))?.versions.find((x) => x.version === job.version)
      if (!v || !(await functions.context(job.fn, job.version)))
        throw new InitlessError(
          'ERR_INTERNAL',
          `${job.fn} ${job.version}: version or context not stored first`,
        )
      if (opts.fail?.(job)) {
        await functions.putVersion(job.fn, { ...v, state: 'failed' })
        throw deployFailed(job.fn, job.version, {
          step: 'bake',
          code: 'ERR_BAKE_NOT_READY',
          message: 'never ready',
          output: 'boom',
        })
      }
      await functions.putVersion(job.fn, { ...v, state: 'ready', image: { tag: `t-${v.version}`, id: 'i' } })
      await functions.activate(job.fn, job.version)
      return {
        fn: job.fn,
        version: job.version,
        hostId: 'h',
        image: `t-${v.version}`,
        built: true,
        baked: true,
        buildMs: 1,
        bakeMs: 2,
        removed: [],
      }
    },
  }
}

/** A build context (tar, as `tar -c -C dir .` writes it) holding these files (tests). */
export async function contextOf(files: Readonly<Record<string, string>>): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'initless-context-'))
  try {
    for (const [name, content] of Object.entries(files)) await writeFile(join(dir, name), content)
    return execFileSync('tar', ['-c', '-C', dir, '.'])
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}
