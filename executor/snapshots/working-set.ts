/**
 * Working-set prefetch for lazy restores.
 *
 * A lazy restore leaves every private anonymous page of the snapshot to `criu lazy-pages`, which
 * serves a page when the process first touches it (a userfaultfd round trip: ~170 us each on this
 * machine class; flask-table's first request touched ~800 pages, ~140 ms). Most of those pages are
 * the same on every restore: the interpreter, the server's accept loop, the request path. So the
 * bake profiles them: it restores the fresh snapshot lazily, sends the readiness probe and one
 * request of each warm-up step (a cold start's path), and records the pages the daemon had to serve
 * on demand (its `#PF` log lines), over several rounds (PROFILE_MIN_ROUNDS, below, says why).
 * Those pages then lose CRIU's lazy flag (PE_LAZY) in the snapshot's pagemap images: every later
 * lazy restore reads them eagerly, in bulk, before the process resumes, and leaves only the rest
 * to the daemon. Short lazy gaps between them turn eager too (EAGER_GAP_PAGES, below). The page
 * data itself does not move (pages-*.img keeps pagemap order), so the images stay valid for eager
 * restores, which ignore the flag.
 *
 * CRIU image files: two 32-bit magics, then entries, each a 32-bit little-endian length and a
 * protobuf message. pagemap-<pid>.img holds one pagemap_head, then pagemap_entry messages
 * (images/pagemap.proto: vaddr=1, compat_nr_pages=2, in_parent=3, flags=4, nr_pages=5).
 */
import { randomBytes } from 'node:crypto'
import { readdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { FunctionDef } from '../../shared/functions.ts'
import { killLazyPages, type Criu, type LazyPagesDaemon } from '../adapters/criu.ts'
import { waitReady } from '../adapters/probe.ts'
import { isProcessAlive } from '../adapters/process.ts'
import type { Runc } from '../adapters/runc.ts'
import { restoreIntoSandbox } from '../runtimes/runtimes.ts'
import { sandboxLimits, type ProcessSpec, type SandboxManager } from '../sandbox/sandbox.ts'
import { warmUp } from './warmup.ts'

/** Version of the profile and rewrite below: part of a snapshot's identity (a change re-bakes). */
export const WORKING_SET_VERSION = 3

export const PAGE_SIZE = 4096n
/** pagemap_entry flags (criu/include/pagemap.h). */
export const PE_PARENT = 1
export const PE_LAZY = 2
export const PE_PRESENT = 4

export interface CriuImage {
  /** The 8 magic bytes at the start. */
  readonly magic: Buffer
  readonly entries: Buffer[]
}

export function decodeCriuImage(buf: Buffer): CriuImage {
  if (buf.length < 8) throw new Error('not a CRIU image: shorter than its magic')
  const entries: Buffer[] = []
  let off = 8
  while (off < buf.length) {
    if (off + 4 > buf.length) throw new Error(`truncated CRIU image: entry header at ${off}`)
    const len = buf.readUInt32LE(off)
    off += 4
    if (off + len > buf.length) throw new Error(`truncated CRIU image: entry of ${len} bytes at ${off}`)
    entries.push(buf.subarray(off, off + len))
    off += len
  }
  return { magic: buf.subarray(0, 8), entries }
}

export function encodeCriuImage(image: CriuImage): Buffer {
  const parts: Buffer[] = [image.magic]
  for (const e of image.entries) {
    const len = Buffer.alloc(4)
    len.writeUInt32LE(e.length)
    parts.push(len, e)
  }
  return Buffer.concat(parts)
}

export interface PagemapEntry {
  readonly vaddr: bigint
  readonly nrPages: bigint
  readonly flags: number
  readonly inParent?: boolean
}

function readVarint(buf: Buffer, at: number): [bigint, number] {
  let value = 0n
  let shift = 0n
  for (let i = at; i < buf.length; i++) {
    const b = buf[i]!
    value |= BigInt(b & 0x7f) << shift
    if ((b & 0x80) === 0) return [value, i + 1]
    shift += 7n
    if (shift > 63n) break
  }
  throw new Error('malformed protobuf varint')
}

function writeVarint(out: number[], v: bigint): void {
  let value = v
  while (value >= 0x80n) {
    out.push(Number(value & 0x7fn) | 0x80)
    value >>= 7n
  }
  out.push(Number(value))
}

export function decodePagemapEntry(msg: Buffer): PagemapEntry {
  let vaddr: bigint | undefined
  let compat: bigint | undefined
  let nrPages: bigint | undefined
  let flags: number | undefined
  let inParent: boolean | undefined
  let at = 0
  while (at < msg.length) {
    const [key, next] = readVarint(msg, at)
    const field = Number(key >> 3n)
    if ((key & 7n) !== 0n) throw new Error(`pagemap_entry field ${field}: unexpected wire type`)
    const [value, after] = readVarint(msg, next)
    at = after
    if (field === 1) vaddr = value
    else if (field === 2) compat = value
    else if (field === 3) inParent = value !== 0n
    else if (field === 4) flags = Number(value)
    else if (field === 5) nrPages = value
  }
  if (vaddr === undefined) throw new Error('pagemap_entry without vaddr')
  // Older images: no flags means present (or in the parent), no nr_pages means the 32-bit count.
  const f = flags ?? (inParent ? PE_PARENT : PE_PRESENT)
  return { vaddr, nrPages: nrPages ?? compat ?? 0n, flags: f, ...(inParent ? { inParent } : {}) }
}

export function encodePagemapEntry(e: PagemapEntry): Buffer {
  const out: number[] = []
  out.push(0x08)
  writeVarint(out, e.vaddr)
  // compat_nr_pages is required; CRIU 4 writes 0 there and the count in nr_pages.
  out.push(0x10, 0x00)
  if (e.inParent) out.push(0x18, 0x01)
  out.push(0x20)
  writeVarint(out, BigInt(e.flags))
  out.push(0x28)
  writeVarint(out, e.nrPages)
  return Buffer.from(out)
}

/**
 * Split every lazy entry so the pages in `hot` (page-aligned addresses) lose PE_LAZY. Order, page
 * counts and non-lazy entries are unchanged. Returns the new entries and how many pages turned eager.
 */
export function markEager(
  entries: readonly PagemapEntry[],
  hot: ReadonlySet<bigint>,
): { entries: PagemapEntry[]; eagerPages: number } {
  const out: PagemapEntry[] = []
  let eagerPages = 0
  for (const e of entries) {
    if ((e.flags & PE_LAZY) === 0 || e.nrPages === 0n) {
      out.push(e)
      continue
    }
    let runStart = e.vaddr
    let runHot: boolean | undefined
    let runPages = 0n
    const flush = () => {
      if (runPages === 0n) return
      out.push({ ...e, vaddr: runStart, nrPages: runPages, flags: runHot ? e.flags & ~PE_LAZY : e.flags })
      if (runHot) eagerPages += Number(runPages)
    }
    for (let i = 0n; i < e.nrPages; i++) {
      const addr = e.vaddr + i * PAGE_SIZE
      const isHot = hot.has(addr)
      if (runHot !== undefined && isHot !== runHot) {
        flush()
        runStart = addr
        runPages = 0n
      }
      runHot = isHot
      runPages++
    }
    flush()
  }
  return { entries: out, eagerPages }
}

/**
 * Lazy runs of at most this many pages between two eager ones turn eager once the profile is done
 * (fillEagerGaps). A profile misses touched pages (the push races it, PROFILE_MIN_ROUNDS), and
 * the neighbours of touched pages are likely touched too; and a scattered eager set makes many
 * small pagemap entries, each of which costs CRIU's run more than a page does. Measured on one
 * bake each, alternated (bench/README.md, "Filling the gaps of the working set"): ts-compile's
 * 2258 entries became 401 and its first answer's upstream time 4-7 ms shorter, spring-greeting's
 * 2-4 ms, for 1-4 ms more in CRIU's run.
 */
export const EAGER_GAP_PAGES = 16

/**
 * Turn eager every lazy entry of at most `maxGap` pages that lies between two eager entries it
 * adjoins (same flags but PE_LAZY, same parent), then merge adjoining entries with equal flags.
 * Page order and counts are unchanged (the page data in pages-*.img stays where it is). Returns
 * the new entries and how many pages turned eager.
 */
export function fillEagerGaps(
  entries: readonly PagemapEntry[],
  maxGap: number,
): { entries: PagemapEntry[]; eagerPages: number } {
  const end = (e: PagemapEntry) => e.vaddr + e.nrPages * PAGE_SIZE
  const isEagerTwin = (e: PagemapEntry, lazy: PagemapEntry) =>
    (e.flags & PE_LAZY) === 0 && (e.flags | PE_LAZY) === lazy.flags && !e.inParent === !lazy.inParent
  let eagerPages = 0
  const filled = entries.map((e, i) => {
    const before = entries[i - 1]
    const after = entries[i + 1]
    if ((e.flags & PE_LAZY) === 0 || e.nrPages > BigInt(maxGap) || !before || !after) return e
    if (!isEagerTwin(before, e) || !isEagerTwin(after, e)) return e
    if (end(before) !== e.vaddr || end(e) !== after.vaddr) return e
    eagerPages += Number(e.nrPages)
    return { ...e, flags: e.flags & ~PE_LAZY }
  })
  const merged: PagemapEntry[] = []
  for (const e of filled) {
    const last = merged.at(-1)
    if (last && last.flags === e.flags && !last.inParent === !e.inParent && end(last) === e.vaddr)
      merged[merged.length - 1] = { ...last, nrPages: last.nrPages + e.nrPages }
    else merged.push(e)
  }
  return { entries: merged, eagerPages }
}

/**
 * Pages each process had served on demand, from a `criu lazy-pages -v4` log:
 * `uffd: <pid>-<uffd>: #PF at 0x<address>` (pid as in the snapshot's process tree).
 */
export function parseFaults(log: string): Map<number, Set<bigint>> {
  const faults = new Map<number, Set<bigint>>()
  for (const m of log.matchAll(/uffd: (\d+)-\d+: #PF at 0x([0-9a-f]+)/g)) {
    const pid = Number(m[1])
    const page = BigInt(`0x${m[2]!}`) & ~(PAGE_SIZE - 1n)
    let set = faults.get(pid)
    if (!set) faults.set(pid, (set = new Set()))
    set.add(page)
  }
  return faults
}

/**
 * Rewrite one pagemap image with `change` (its entries after the head); the file is replaced
 * atomically, and only when pages turned eager. Returns how many did.
 */
async function rewritePagemap(
  file: string,
  change: (entries: PagemapEntry[]) => { entries: PagemapEntry[]; eagerPages: number },
): Promise<number> {
  const image = decodeCriuImage(await readFile(file))
  const [head, ...rest] = image.entries
  if (!head) return 0
  const { entries, eagerPages } = change(rest.map(decodePagemapEntry))
  if (eagerPages === 0) return 0
  const tmp = `${file}.tmp`
  await writeFile(
    tmp,
    encodeCriuImage({ magic: image.magic, entries: [head, ...entries.map(encodePagemapEntry)] }),
    { mode: 0o600 },
  )
  await rename(tmp, file)
  return eagerPages
}

/**
 * Rewrite the snapshot's pagemap-<pid>.img files so the given pages restore eagerly. Returns the
 * number of pages that turned eager.
 */
export async function applyWorkingSet(imagesDir: string, faults: Map<number, Set<bigint>>): Promise<number> {
  let total = 0
  const names = new Set(await readdir(imagesDir))
  for (const [pid, pages] of faults) {
    const name = `pagemap-${pid}.img`
    if (names.has(name)) total += await rewritePagemap(join(imagesDir, name), (e) => markEager(e, pages))
  }
  return total
}

/** fillEagerGaps on every pagemap image of the snapshot; returns the pages that turned eager. */
export async function applyEagerGaps(imagesDir: string, maxGap: number): Promise<number> {
  let total = 0
  for (const name of await readdir(imagesDir)) {
    if (/^pagemap-\d+\.img$/.test(name))
      total += await rewritePagemap(join(imagesDir, name), (e) => fillEagerGaps(e, maxGap))
  }
  return total
}

/**
 * How many profiling restores a bake runs. The daemon pushes every page in the background from the
 * moment the process resumes, so which touched pages a round sees as faults depends on how far the
 * push got first, and that differs from restore to restore: after two rounds, ts-compile's first
 * request still faulted 143-950 pages, and spring-greeting's profile held 441-2055 pages from one
 * bake to the next (bench/README.md, "The working-set profile races the push"). Each round records
 * another part of the same working set; the profile ends once two rounds in a row add little.
 */
export const PROFILE_MIN_ROUNDS = 4
export const PROFILE_MAX_ROUNDS = 10
/** A round that makes fewer pages eager than this added little. */
export const PROFILE_SETTLED_PAGES = 32

/** Whether a profile whose rounds made these numbers of pages eager, in order, is done. */
export function profileSettled(perRound: readonly number[]): boolean {
  if (perRound.length >= PROFILE_MAX_ROUNDS) return true
  if (perRound.length < PROFILE_MIN_ROUNDS) return false
  return perRound.slice(-2).every((pages) => pages < PROFILE_SETTLED_PAGES)
}

export interface WorkingSetProfile {
  /** Pages that turned eager: over all rounds, and then the gaps between them. */
  readonly pages: number
  /** Pages each round turned eager, in order. */
  readonly perRound: readonly number[]
  /** Pages of the gaps filled after the rounds (EAGER_GAP_PAGES). */
  readonly gapPages: number
}

export interface ProfileDeps {
  readonly runc: Runc
  readonly criu: Criu
  readonly sandboxes: SandboxManager
}

export interface ProfileRequest {
  readonly fn: FunctionDef
  readonly process: ProcessSpec
  /** The image's unpacked rootfs (the lowest overlay layer). */
  readonly rootfs: string
  /** The fresh snapshot: its images are rewritten in place. */
  readonly imagesDir: string
  readonly upperDir: string
}

/**
 * Restore the snapshot lazily with a verbose lazy-pages daemon, send the readiness probe and one
 * request of each warm-up step, and make every page served on demand eager in the snapshot (see
 * the top of this file), round after round until profileSettled; then fill the short gaps.
 */
export async function profileWorkingSet(deps: ProfileDeps, req: ProfileRequest): Promise<WorkingSetProfile> {
  const m = req.fn.manifest
  const perRound: number[] = []
  while (!profileSettled(perRound)) {
    const sb = await deps.sandboxes.prepare({
      id: `ws-${req.fn.name}-${randomBytes(4).toString('hex')}`,
      fn: req.fn.name,
      lowers: [req.upperDir, req.rootfs],
      process: req.process,
      ...sandboxLimits(m),
      forRestore: true,
    })
    let daemon: LazyPagesDaemon | undefined
    try {
      daemon = await deps.criu.startLazyPages(req.imagesDir, sb.criuWorkDir, { verbose: true })
      const { pid } = await restoreIntoSandbox(deps, sb, req.imagesDir, true, daemon)
      const isAlive = () => isProcessAlive(pid)
      await waitReady(sb.netns.ip, m.port, {
        path: m.readiness.path,
        expect: m.readiness.expect,
        timeoutMs: m.readiness.timeout,
        intervalMs: 1,
        isAlive,
      })
      // One request of each warm-up step: a cold start is the probe and its first request. The
      // full warm-up touches far more (every page of it made eager costs the restore ~4-14 us,
      // spring-greeting's 560 -> 2554 pages added ~30 ms to CRIU's run) for pages a first
      // request never reaches.
      await warmUp({ ...m, warmup: m.warmup.map((step) => ({ ...step, count: 1 })) }, sb.netns.ip, isAlive)
      // Every fault of the answered requests is in the log by now.
      const log = await readFile(join(sb.criuWorkDir, 'lazy-pages.log'), 'utf8')
      perRound.push(await applyWorkingSet(req.imagesDir, parseFaults(log)))
    } finally {
      killLazyPages(daemon)
      await deps.sandboxes.destroy(sb)
    }
  }
  const gapPages = await applyEagerGaps(req.imagesDir, EAGER_GAP_PAGES)
  return { pages: perRound.reduce((a, b) => a + b, gapPages), perRound, gapPages }
}
