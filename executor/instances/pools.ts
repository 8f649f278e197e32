/**
 * The pre-started pools: per function, `scaling.poolSize` sandboxes prepared ahead over its current
 * snapshot (for a lazy restore with its lazy-pages daemon started too), so a cold start skips
 * preparing one. A pool belongs to one snapshot: when the snapshot changes its sandboxes go.
 */
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import { errorMessage } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import type { ImageConfig } from '../adapters/docker.ts'
import { chooseRuntime, discardPooled, type PooledSandbox, type Runtime } from '../runtimes/runtimes.ts'
import type { Sandbox, SandboxManager } from '../sandbox/sandbox.ts'
import type { Snapshot } from '../snapshots/snapshot-store.ts'
import type { Prepared } from './preparations.ts'

export interface SandboxPoolsDeps {
  readonly sandboxes: Pick<SandboxManager, 'destroy'>
  /** The restore runtimes a pooled sandbox may be primed for. */
  readonly runtimes: Readonly<Record<'lazy' | 'eager', Pick<Runtime, 'prime'>>>
  readonly lazyThreshold: number
  readonly prepare: (fn: FunctionDef) => Promise<Prepared>
  readonly newSandbox: (
    id: string,
    fn: FunctionDef,
    image: ImageConfig,
    snapshot: Snapshot,
  ) => Promise<Sandbox>
  readonly logger: Logger
}

export interface SandboxPools {
  /** A pooled sandbox layered over `snapshot`, if one is ready. */
  take(fn: string, snapshot: Snapshot): PooledSandbox | undefined
  /** Fill a function's pool to its size; one fill per function at a time. Never rejects. */
  fill(fn: FunctionDef): Promise<void>
  size(fn: string): number
  /** Release every pooled sandbox (shutdown). */
  drain(): Promise<void>
}

/** Create the pools of one instance manager. */
export function createSandboxPools(deps: SandboxPoolsDeps): SandboxPools {
  const pools = new Map<string, { key: string; sandboxes: PooledSandbox[] }>()
  const fills = new Map<string, Promise<void>>()

  const discardAll = async (list: PooledSandbox[]) => {
    for (const p of list.splice(0)) await discardPooled(deps.sandboxes, p).catch(() => undefined)
  }

  /** The pool for `snapshot`, emptied of sandboxes layered over an older one. */
  async function poolFor(fn: string, snapshot: Snapshot) {
    let pool = pools.get(fn)
    if (pool && pool.key !== snapshot.meta.key) {
      await discardAll(pool.sandboxes)
      pool = undefined
    }
    if (!pool) {
      pool = { key: snapshot.meta.key, sandboxes: [] }
      pools.set(fn, pool)
    }
    return pool
  }

  async function fillOnce(fn: FunctionDef): Promise<void> {
    const want = fn.manifest.scaling.poolSize
    if (want === 0 || fn.manifest.restore.policy === 'boot') return
    try {
      const prep = await deps.prepare(fn)
      if (!prep.snapshot) return
      const pool = await poolFor(fn.name, prep.snapshot)
      const kind = chooseRuntime(fn.manifest.restore.policy, prep.snapshot.meta.sizeBytes, deps.lazyThreshold)
      const runtime = kind === 'lazy' || kind === 'eager' ? deps.runtimes[kind] : undefined
      while (pool.sandboxes.length < want) {
        const sandbox = await deps.newSandbox(
          `i${randomBytes(6).toString('hex')}`,
          fn,
          prep.image,
          prep.snapshot,
        )
        const primed = runtime?.prime
          ? await runtime.prime(sandbox, prep.snapshot).catch(async (err: unknown) => {
              await deps.sandboxes.destroy(sandbox).catch(() => undefined)
              throw err
            })
          : { sandbox }
        pool.sandboxes.push(primed)
      }
    } catch (err) {
      deps.logger.error({ fn: fn.name, err: errorMessage(err) }, 'pool fill failed')
    }
  }

  return {
    take(fn, snapshot) {
      const pool = pools.get(fn)
      if (!pool || pool.key !== snapshot.meta.key) return undefined
      return pool.sandboxes.shift()
    },
    fill(fn) {
      let p = fills.get(fn.name)
      if (!p) {
        p = fillOnce(fn).finally(() => fills.delete(fn.name))
        fills.set(fn.name, p)
      }
      return p
    },
    size: (fn) => pools.get(fn)?.sandboxes.length ?? 0,
    async drain() {
      for (const pool of pools.values()) await discardAll(pool.sandboxes)
    },
  }
}
