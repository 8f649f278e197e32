/**
 * The snapshot store: <state>/snapshots/<fn>/<key>/ holding CRIU's images (`images/`), the overlay
 * layer the function wrote before its checkpoint (`upper/`) and `meta.json`. The key hashes what a
 * restore depends on — manifest, image, CRIU version and kernel — so a snapshot whose inputs changed
 * is never found, only rebuilt. The store is 0700: snapshots hold process memory, secrets included.
 * A snapshot appears only complete (written under a temporary name, renamed into place).
 */
import { createHash, randomBytes } from 'node:crypto'
import { chmod, mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { canonicalJson } from '../../shared/manifest.ts'
import { checksumSnapshot, type SnapshotChecksums } from './snapshot-checksums.ts'
import { createSnapshotVerifier, stampOf, type ImageStamps } from './snapshot-verifier.ts'

export interface SnapshotIdentity {
  readonly fn: string
  readonly manifestHash: string
  readonly imageId: string
  readonly criuVersion: string
  readonly kernel: string
  /** SANDBOX_LAYOUT_VERSION of the sandbox the checkpoint was taken in. */
  readonly layout: number
  /** WORKING_SET_VERSION of the working-set profile applied to its pagemaps (0: none). */
  readonly prefetch: number
  /** The system-call filter dumped with the process (seccomp.ts seccompId). */
  readonly seccomp: string
}

export interface SnapshotMeta extends SnapshotIdentity {
  readonly key: string
  readonly sizeBytes: number
  readonly bakeMs: number
  readonly warmupRequests: number
  /** Epoch ms. */
  readonly createdAt: number
  readonly port: number
  /** Pages the working-set profile made eager for lazy restores (working-set.ts). */
  readonly workingSetPages?: number
  /** Size of every CRIU image file: a truncated or replaced file is caught before a restore. */
  readonly files?: Readonly<Record<string, number>>
  /** Checksum of every file of the snapshot (snapshot-checksums.ts). */
  readonly checksums?: SnapshotChecksums
}

export interface Snapshot {
  readonly meta: SnapshotMeta
  readonly dir: string
  readonly imagesDir: string
  readonly upperDir: string
}

export interface PendingSnapshot {
  readonly dir: string
  readonly imagesDir: string
  readonly upperDir: string
  /** Write meta.json and move the snapshot into place, replacing older ones of the function. */
  commit(meta: Omit<SnapshotMeta, 'key' | 'sizeBytes'>): Promise<Snapshot>
  discard(): Promise<void>
}

export interface SnapshotStore {
  snapshotKey(id: SnapshotIdentity): string
  /** The valid snapshot for exactly these inputs, if baked and not marked broken. */
  find(id: SnapshotIdentity): Promise<Snapshot | undefined>
  /** Newest complete snapshot of a function, whatever its inputs (for listings). */
  latest(fn: string): Promise<Snapshot | undefined>
  begin(id: SnapshotIdentity): Promise<PendingSnapshot>
  /** A snapshot that failed to restore is never used again; the next bake replaces it. */
  markBroken(snapshot: Snapshot, reason: string): Promise<void>
  /**
   * Still the snapshot in its place (a re-bake of the same inputs replaces it under the same
   * path) and not marked broken: a stat and a small read.
   */
  usable(snapshot: Snapshot): Promise<boolean>
  /**
   * Throws ERR_SNAPSHOT_CORRUPT when the snapshot is not intact; called before every restore. An
   * image file missing or of another size fails at once (a stat each, ~1 ms). The checksums of
   * every file are checked the first time this store sees the snapshot (unless it baked it) and
   * again whenever an image file's inode times changed since; the restores that arrive meanwhile
   * wait for that one check.
   */
  verify(snapshot: Snapshot): Promise<void>
  /** Check every file's checksum now, whatever was checked before (the scrub); same errors. */
  scrub(snapshot: Snapshot): Promise<void>
  remove(fn: string): Promise<void>
  /**
   * Retire the function's snapshots whose key is not in `keep` and that were made more than
   * `minAgeMs` ago (a bake just committed is not recorded anywhere yet); collect() deletes them
   * once no instance uses them. Returns the retired keys.
   */
  retire(fn: string, keep: ReadonlySet<string>, minAgeMs: number): Promise<string[]>
  /**
   * Delete replaced snapshots no instance uses any more, and bakes abandoned for over an hour.
   * Replaced snapshots are not deleted at once: a running instance's overlay and a lazy-pages
   * daemon may still read them.
   */
  collect(isInUse: (dir: string) => boolean): Promise<string[]>
  /** The image ids the current snapshots restore over (their unpacked files must stay). */
  imageIds(): Promise<Set<string>>
}

const ABANDONED_MS = 3_600_000

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  )
}

/** Total bytes of the regular files below `dir`. */
export async function directorySize(dir: string): Promise<number> {
  let total = 0
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) total += await directorySize(path)
    else if (entry.isFile()) total += (await stat(path)).size
  }
  return total
}

/** fsync one regular file or directory (its entries). */
async function syncPath(path: string): Promise<void> {
  const fh = await open(path, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/**
 * fsync every regular file and directory below `dir` and `dir` itself. Links need only their
 * directory's; device nodes, fifos and sockets of the layer hold no data (and opening a fifo would
 * block).
 */
export async function syncTree(dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) await syncTree(path)
    else if (entry.isFile()) await syncPath(path)
  }
  await syncPath(dir)
}

function snapshotAt(meta: SnapshotMeta, dir: string): Snapshot {
  return { meta, dir, imagesDir: join(dir, 'images'), upperDir: join(dir, 'upper') }
}

/** The snapshot in `dir`, or undefined when it is broken, incomplete or unreadable. */
async function load(dir: string): Promise<Snapshot | undefined> {
  if (await exists(join(dir, 'broken'))) return undefined
  try {
    return snapshotAt(JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as SnapshotMeta, dir)
  } catch {
    return undefined
  }
}

/**
 * A snapshot being written in `dir` (a temporary name in `fnDir`): commit makes it root's only,
 * records its files' sizes and checksums in its meta, retires every older snapshot of the function
 * (only one is ever current) and renames it into place. `committed` learns the image files' stamps
 * its checksums were taken at.
 */
function pendingSnapshot(
  fnDir: string,
  dir: string,
  key: string,
  committed: (snapshot: Snapshot, stamps: ImageStamps) => void,
): PendingSnapshot {
  return {
    dir,
    imagesDir: join(dir, 'images'),
    upperDir: join(dir, 'upper'),
    async commit(partial) {
      const sizeBytes = await directorySize(dir)
      const files: Record<string, number> = {}
      const stamps: ImageStamps = new Map()
      // Process memory, secrets included: only root reads a snapshot. The layer keeps the
      // modes the function's files had (they are its filesystem) below the 0700 directory.
      await chmod(dir, 0o700)
      await chmod(join(dir, 'images'), 0o700)
      for (const name of await readdir(join(dir, 'images'))) {
        await chmod(join(dir, 'images', name), 0o600)
        const st = await stat(join(dir, 'images', name))
        files[name] = st.size
        stamps.set(name, stampOf(st))
      }
      const checksums = await checksumSnapshot(dir)
      const meta: SnapshotMeta = { ...partial, key, sizeBytes, files, checksums }
      await writeFile(join(dir, 'meta.json'), JSON.stringify(meta, null, 2), { mode: 0o600 })
      // On disk before it is in place: a snapshot that is found must survive a crash whole, and
      // the kernel's own writeback of a fresh bake (up to 1 GB, dirty_expire_centisecs after it)
      // stalls the restores that read it meanwhile (bench/README.md, "A fresh bake's writeback").
      await syncTree(dir)
      const final = join(fnDir, key)
      // Snapshots of other inputs stay: kept versions of the function restore from them
      // (rollback). retire() removes what the function registry no longer keeps.
      if (await exists(final)) await rename(final, join(fnDir, `.retired-${key}-${Date.now()}`))
      await rename(dir, final)
      await syncPath(fnDir)
      const snapshot = snapshotAt(meta, final)
      committed(snapshot, stamps)
      return snapshot
    },
    async discard() {
      await rm(dir, { recursive: true, force: true })
    },
  }
}

/** Retired snapshots, and temporary ones abandoned for ABANDONED_MS, that nothing uses any more. */
async function collectUnused(root: string, isInUse: (dir: string) => boolean): Promise<string[]> {
  const removed: string[] = []
  for (const fn of await readdir(root).catch(() => [] as string[])) {
    for (const name of await readdir(join(root, fn)).catch(() => [] as string[])) {
      const dir = join(root, fn, name)
      const retired = name.startsWith('.retired-')
      const abandoned =
        name.startsWith('.tmp-') &&
        Date.now() -
          (await stat(dir).then(
            (s) => s.mtimeMs,
            () => Date.now(),
          )) >
          ABANDONED_MS
      if ((retired || abandoned) && !isInUse(dir)) {
        await rm(dir, { recursive: true, force: true })
        removed.push(dir)
      }
    }
  }
  return removed
}

export function createSnapshotStore(deps: { stateDir: string }): SnapshotStore {
  const root = join(deps.stateDir, 'snapshots')
  const verifier = createSnapshotVerifier()

  /** The function's snapshots in place: neither retired, temporary nor broken. */
  async function current(fn: string): Promise<Snapshot[]> {
    const dir = join(root, fn)
    const names = await readdir(dir).catch(() => [] as string[])
    return (await Promise.all(names.filter((n) => !n.startsWith('.')).map((n) => load(join(dir, n))))).filter(
      (s): s is Snapshot => s !== undefined,
    )
  }

  const store: SnapshotStore = {
    snapshotKey(id) {
      const { fn, manifestHash, imageId, criuVersion, kernel, layout, prefetch, seccomp } = id
      return createHash('sha256')
        .update(canonicalJson({ fn, manifestHash, imageId, criuVersion, kernel, layout, prefetch, seccomp }))
        .digest('hex')
        .slice(0, 20)
    },

    async find(id) {
      const snap = await load(join(root, id.fn, store.snapshotKey(id)))
      return snap && snap.meta.manifestHash === id.manifestHash && snap.meta.imageId === id.imageId
        ? snap
        : undefined
    },

    async latest(fn) {
      const snaps = await current(fn)
      return snaps.sort((a, b) => b.meta.createdAt - a.meta.createdAt)[0]
    },

    async begin(id) {
      await mkdir(root, { recursive: true, mode: 0o700 })
      const fnDir = join(root, id.fn)
      await mkdir(fnDir, { recursive: true, mode: 0o700 })
      const key = store.snapshotKey(id)
      const dir = join(fnDir, `.tmp-${key}-${randomBytes(4).toString('hex')}`)
      await mkdir(join(dir, 'images'), { recursive: true, mode: 0o700 })
      return pendingSnapshot(fnDir, dir, key, (snapshot, stamps) => verifier.trust(snapshot, stamps))
    },

    async usable(snapshot) {
      const current = await load(snapshot.dir)
      return current?.meta.createdAt === snapshot.meta.createdAt && current.meta.key === snapshot.meta.key
    },

    async markBroken(snapshot, reason) {
      await writeFile(join(snapshot.dir, 'broken'), `${new Date().toISOString()} ${reason}\n`).catch(
        () => undefined,
      )
    },

    verify: (snapshot) => verifier.verify(snapshot),
    scrub: (snapshot) => verifier.scrub(snapshot),

    async retire(fn, keep, minAgeMs) {
      const fnDir = join(root, fn)
      const retired: string[] = []
      for (const name of await readdir(fnDir).catch(() => [] as string[])) {
        if (name.startsWith('.') || keep.has(name)) continue
        const snap = await load(join(fnDir, name))
        if (snap && Date.now() - snap.meta.createdAt < minAgeMs) continue
        await rename(join(fnDir, name), join(fnDir, `.retired-${name}-${Date.now()}`))
        retired.push(name)
      }
      return retired
    },

    async remove(fn) {
      await rm(join(root, fn), { recursive: true, force: true })
    },

    async imageIds() {
      const ids = new Set<string>()
      for (const fn of await readdir(root).catch(() => [] as string[]))
        for (const snap of await current(fn)) ids.add(snap.meta.imageId)
      return ids
    },

    collect: (isInUse) => collectUnused(root, isInUse),
  }
  return store
}
