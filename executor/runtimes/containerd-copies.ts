/**
 * containerd 1.6 (Debian 12's) leaves a full copy of a checkpoint in its temp dir
 * (`/tmp/ctrd-checkpoint*`) after every Docker checkpoint and every restore from one: about the
 * checkpoint's size per call, never removed. The docker runtime removes the copies its own calls
 * left, once none of them runs.
 */
import { readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { errorMessage } from '../../shared/errors.ts'

/** Where containerd (started without TMPDIR) makes its checkpoint copies. */
export const CONTAINERD_TMP = '/tmp'
const CONTAINERD_COPY_PREFIX = 'ctrd-checkpoint'
/** A copy this old is no restore's any more (the largest sample's takes ~30 s): left by a crash. */
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

export interface CopySweeper {
  /** Run a Docker checkpoint or restore call, remembering that it may leave a containerd copy. */
  tracked<T>(call: () => Promise<T>): Promise<T>
  /** Remove the copies left by the calls made since the last sweep, once none runs. Never rejects. */
  sweep(): Promise<void>
}

export function createCopySweeper(deps: {
  readonly logger: Logger
  readonly remove?: (sinceMs: number) => Promise<number>
}): CopySweeper {
  const remove = deps.remove ?? ((since: number) => removeContainerdCopies(since))
  /** Checkpoint and restore calls running, and when the earliest unswept one began. */
  let calls = 0
  let unsweptSince: number | undefined
  return {
    async tracked(call) {
      unsweptSince ??= Date.now()
      calls++
      try {
        return await call()
      } finally {
        calls--
      }
    },
    async sweep() {
      if (calls > 0 || unsweptSince === undefined) return
      const since = unsweptSince
      unsweptSince = undefined
      const n = await remove(since).catch((err: unknown) => {
        deps.logger.warn({ err: errorMessage(err) }, "removing containerd's checkpoint copies failed")
        return 0
      })
      if (n) deps.logger.debug({ removed: n }, "removed containerd's checkpoint copies")
    },
  }
}
