/**
 * The snapshot store's integrity checks (SnapshotStore.verify and scrub). The image files' sizes
 * are checked before every restore (a stat each); the checksums of every file the first time this
 * process sees a snapshot (unless it baked it) and again whenever an image file's stamp changed,
 * one check per snapshot at a time: the restores that arrive meanwhile wait for it.
 */
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { InitlessError } from '../../shared/errors.ts'
import { checksumProblems, type SnapshotChecksums } from './snapshot-checksums.ts'

/** What the checks read of a snapshot (snapshot-store.ts Snapshot). */
export interface CheckedSnapshot {
  readonly dir: string
  readonly imagesDir: string
  readonly meta: {
    readonly fn: string
    readonly key: string
    readonly createdAt: number
    readonly files?: Readonly<Record<string, number>>
    readonly checksums?: SnapshotChecksums
  }
}

/** Image file name -> stamp. */
export type ImageStamps = Map<string, string>

export interface SnapshotVerifier {
  verify(snapshot: CheckedSnapshot): Promise<void>
  scrub(snapshot: CheckedSnapshot): Promise<void>
  /** The snapshot's checksums were just taken from the files with these stamps (a bake). */
  trust(snapshot: CheckedSnapshot, stamps: ImageStamps): void
}

/** What identifies one image file's inode and its last change: any write changes it. */
export function stampOf(s: { size: number; ino: number; mtimeMs: number; ctimeMs: number }): string {
  return `${s.size}:${s.ino}:${s.mtimeMs}:${s.ctimeMs}`
}

function corrupt(snapshot: CheckedSnapshot, problems: string[]): InitlessError {
  return new InitlessError(
    'ERR_SNAPSHOT_CORRUPT',
    `snapshot ${snapshot.meta.fn}/${snapshot.meta.key} is corrupt: ${problems.sort().join('; ')}`,
    { details: { fn: snapshot.meta.fn, key: snapshot.meta.key, problems } },
  )
}

/** The image files' sizes against meta.files, and their stamps. */
async function statImages(snapshot: CheckedSnapshot): Promise<{ problems: string[]; stamps: ImageStamps }> {
  const problems: string[] = []
  const stamps: ImageStamps = new Map()
  await Promise.all(
    Object.entries(snapshot.meta.files ?? {}).map(async ([name, size]) => {
      const st = await stat(join(snapshot.imagesDir, name)).catch(() => undefined)
      if (!st) problems.push(`${name} is missing`)
      else if (st.size !== size) problems.push(`${name} has ${st.size} bytes, expected ${size}`)
      else stamps.set(name, stampOf(st))
    }),
  )
  return { problems, stamps }
}

function sameStamps(a: ImageStamps, b: ImageStamps): boolean {
  if (a.size !== b.size) return false
  for (const [k, v] of a) if (b.get(k) !== v) return false
  return true
}

export function createSnapshotVerifier(): SnapshotVerifier {
  /** Snapshots whose checksums matched (or that were baked here), by directory and bake time. */
  const verified = new Map<string, ImageStamps>()
  const checking = new Map<string, Promise<void>>()
  const identityOf = (s: CheckedSnapshot) => `${s.dir}\0${s.meta.createdAt}`

  /** Hash every file against meta.checksums; one check per snapshot at a time. */
  function checkContents(snapshot: CheckedSnapshot): Promise<void> {
    const id = identityOf(snapshot)
    let running = checking.get(id)
    if (!running) {
      running = (async () => {
        const expected = snapshot.meta.checksums
        // Stamps taken before the reads: a write while hashing shows at the next restore.
        const { problems, stamps } = await statImages(snapshot)
        if (!problems.length && expected) problems.push(...(await checksumProblems(snapshot.dir, expected)))
        if (problems.length) {
          verified.delete(id)
          throw corrupt(snapshot, problems)
        }
        verified.set(id, stamps)
      })().finally(() => checking.delete(id))
      checking.set(id, running)
    }
    return running
  }

  return {
    async verify(snapshot) {
      const { problems, stamps } = await statImages(snapshot)
      if (problems.length) throw corrupt(snapshot, problems)
      const known = verified.get(identityOf(snapshot))
      if (known && sameStamps(known, stamps)) return
      await checkContents(snapshot)
    },

    async scrub(snapshot) {
      // A check already under way is as fresh as one started now.
      verified.delete(identityOf(snapshot))
      await checkContents(snapshot)
    },

    trust(snapshot, stamps) {
      verified.set(identityOf(snapshot), stamps)
    },
  }
}
