/**
 * Checksums of a snapshot's files: recorded at bake, checked before the snapshot's first restore
 * in an executor process, after any change of an image file's inode times, and by the scrub.
 * CRIU's images carry no checksum of their own: a flipped byte in a pages file restores as is.
 *
 * Every regular file below the snapshot's directory is hashed (CRIU's images and the overlay layer
 * the function wrote), except meta.json, which holds the sums. Symbolic links are recorded by
 * target; device nodes, fifos and sockets of the layer carry no data to check.
 */
import { createHash } from 'node:crypto'
import { lstat, open, readdir, readlink } from 'node:fs/promises'
import { join } from 'node:path'

/**
 * SHA-256, which OpenSSL runs on the CPU's SHA extensions: flask-table's 979 MiB took 1.2-2.9 s
 * with the reads on this VM class (a busy machine; docs/security.md). MD5 and BLAKE2b were 2-4x
 * slower here; CRC32 ~3x faster, but Node's zlib.crc32 needs Node >= 20.15.
 */
export const CHECKSUM_ALGORITHM = 'sha256'

/** Files in the snapshot directory that are not part of its content. */
const NOT_CONTENT = new Set(['meta.json', 'broken'])

export interface FileChecksum {
  readonly size: number
  /** Hex digest of the contents; for a symbolic link, of its target. */
  readonly hash: string
}

export interface SnapshotChecksums {
  readonly algorithm: string
  /** By path relative to the snapshot directory (`images/pages-1.img`, `upper/tmp/x`). */
  readonly files: Readonly<Record<string, FileChecksum>>
}

const CHUNK = 4 * 1024 * 1024

/** Hash one file in 4 MiB reads (the event loop gets a turn between reads). */
export async function hashFile(path: string, buf: Buffer = Buffer.allocUnsafe(CHUNK)): Promise<FileChecksum> {
  const hash = createHash(CHECKSUM_ALGORITHM)
  const fh = await open(path, 'r')
  let size = 0
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null)
      if (bytesRead === 0) break
      hash.update(buf.subarray(0, bytesRead))
      size += bytesRead
    }
  } finally {
    await fh.close()
  }
  return { size, hash: hash.digest('hex') }
}

/** Relative paths of the content files below `dir`, sorted, with whether each is a link. */
async function contentFiles(dir: string, prefix = ''): Promise<{ rel: string; link: boolean }[]> {
  const out: { rel: string; link: boolean }[] = []
  const entries = await readdir(join(dir, prefix), { withFileTypes: true })
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name
    if (!prefix && NOT_CONTENT.has(e.name)) continue
    if (e.isDirectory()) out.push(...(await contentFiles(dir, rel)))
    else if (e.isFile()) out.push({ rel, link: false })
    else if (e.isSymbolicLink()) out.push({ rel, link: true })
  }
  return out
}

async function checksumOf(
  dir: string,
  file: { rel: string; link: boolean },
  buf: Buffer,
): Promise<FileChecksum> {
  const path = join(dir, file.rel)
  if (!file.link) return hashFile(path, buf)
  const target = await readlink(path)
  return { size: target.length, hash: createHash(CHECKSUM_ALGORITHM).update(target).digest('hex') }
}

/** Checksum every content file below `dir`, one file at a time. */
export async function checksumSnapshot(dir: string): Promise<SnapshotChecksums> {
  const buf = Buffer.allocUnsafe(CHUNK)
  const files: Record<string, FileChecksum> = {}
  for (const f of await contentFiles(dir)) files[f.rel] = await checksumOf(dir, f, buf)
  return { algorithm: CHECKSUM_ALGORITHM, files }
}

/**
 * Compare `dir` with its recorded checksums: every recorded file present with the same size and
 * hash, no content file added. Returns the problems found (empty: intact). Sizes are compared
 * before anything is read, so a truncated file costs no hashing.
 */
export async function checksumProblems(dir: string, expected: SnapshotChecksums): Promise<string[]> {
  if (expected.algorithm !== CHECKSUM_ALGORITHM)
    return [`checksums were recorded with ${expected.algorithm}, this executor checks ${CHECKSUM_ALGORITHM}`]
  const problems: string[] = []
  const actual = await contentFiles(dir)
  const present = new Set(actual.map((f) => f.rel))
  for (const rel of Object.keys(expected.files)) if (!present.has(rel)) problems.push(`${rel} is missing`)
  for (const f of actual) if (!(f.rel in expected.files)) problems.push(`${f.rel} was added`)
  const toHash: { rel: string; link: boolean }[] = []
  for (const f of actual) {
    const want = expected.files[f.rel]
    if (!want) continue
    const size = f.link ? (await readlink(join(dir, f.rel))).length : (await lstat(join(dir, f.rel))).size
    if (size !== want.size) problems.push(`${f.rel} has ${size} bytes, expected ${want.size}`)
    else toHash.push(f)
  }
  if (problems.length) return problems
  const buf = Buffer.allocUnsafe(CHUNK)
  for (const f of toHash) {
    const got = await checksumOf(dir, f, buf)
    const want = expected.files[f.rel]!
    if (got.hash !== want.hash)
      problems.push(
        `${f.rel}: ${expected.algorithm} checksum mismatch (recorded ${want.hash.slice(0, 12)}…, now ${got.hash.slice(0, 12)}…)`,
      )
  }
  return problems
}
