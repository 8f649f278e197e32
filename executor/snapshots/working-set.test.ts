import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import {
  applyEagerGaps,
  applyWorkingSet,
  decodeCriuImage,
  decodePagemapEntry,
  encodeCriuImage,
  encodePagemapEntry,
  fillEagerGaps,
  markEager,
  parseFaults,
  PE_LAZY,
  PROFILE_MAX_ROUNDS,
  PROFILE_MIN_ROUNDS,
  PROFILE_SETTLED_PAGES,
  profileSettled,
  PE_PRESENT,
  type PagemapEntry,
} from './working-set.ts'

const P = 0x1000n
const LAZY = PE_PRESENT | PE_LAZY
// The magics of a pagemap image (IMG_COMMON_MAGIC, PAGEMAP_MAGIC), as CRIU 4.2 writes them.
const MAGIC = Buffer.from('1943565425400856', 'hex')
// pagemap_head { pages_id: 1 }
const HEAD = Buffer.from([0x08, 0x01])

function pagemapFile(entries: PagemapEntry[]): Buffer {
  return encodeCriuImage({ magic: MAGIC, entries: [HEAD, ...entries.map(encodePagemapEntry)] })
}

function readPagemap(buf: Buffer): PagemapEntry[] {
  return decodeCriuImage(buf).entries.slice(1).map(decodePagemapEntry)
}

describe('CRIU pagemap images', () => {
  test('an entry as CRIU 4.2 writes it decodes and encodes byte for byte', () => {
    // From a real pagemap-1.img: vaddr 0x41f000 (varint), compat_nr_pages 0, flags 4, nr_pages 1.
    const raw = Buffer.from('0880e08702100020042801', 'hex')
    const e = decodePagemapEntry(raw)
    assert.deepEqual(e, { vaddr: 0x41f000n, nrPages: 1n, flags: PE_PRESENT })
    assert.ok(encodePagemapEntry(e).equals(raw))
  })

  test('round trip of entries with 64-bit addresses and large page counts', () => {
    const entries: PagemapEntry[] = [
      { vaddr: 0x7fbd175a0000n, nrPages: 1n, flags: LAZY },
      { vaddr: 0x55d0c0000000n, nrPages: 300_000n, flags: PE_PRESENT },
      { vaddr: 0xffffffffff600000n, nrPages: 2n ** 33n, flags: LAZY },
    ]
    const buf = pagemapFile(entries)
    assert.deepEqual(readPagemap(buf), entries)
    assert.ok(encodeCriuImage(decodeCriuImage(buf)).equals(buf))
  })

  test('a truncated image is refused', () => {
    const buf = pagemapFile([{ vaddr: P, nrPages: 1n, flags: LAZY }])
    assert.throws(() => decodeCriuImage(buf.subarray(0, buf.length - 1)), /truncated CRIU image/)
    assert.throws(() => decodeCriuImage(buf.subarray(0, 4)), /not a CRIU image/)
  })
})

describe('markEager', () => {
  const entry = (vaddr: bigint, nrPages: bigint, flags = LAZY): PagemapEntry => ({ vaddr, nrPages, flags })

  test('splits a lazy entry around hot pages, keeping order and page counts', () => {
    const { entries, eagerPages } = markEager(
      [entry(0x10n * P, 6n)],
      new Set([0x11n * P, 0x12n * P, 0x15n * P]),
    )
    assert.deepEqual(entries, [
      entry(0x10n * P, 1n),
      entry(0x11n * P, 2n, PE_PRESENT),
      entry(0x13n * P, 2n),
      entry(0x15n * P, 1n, PE_PRESENT),
    ])
    assert.equal(eagerPages, 3)
  })

  test('a fully hot entry turns eager whole; non-lazy entries and cold ones are untouched', () => {
    const input = [entry(0x10n * P, 2n), entry(0x20n * P, 3n, PE_PRESENT), entry(0x30n * P, 4n)]
    const hot = new Set([0x10n * P, 0x11n * P, 0x21n * P])
    const { entries, eagerPages } = markEager(input, hot)
    assert.deepEqual(entries, [entry(0x10n * P, 2n, PE_PRESENT), input[1], input[2]])
    assert.equal(eagerPages, 2)
  })

  test('no hot pages: the same entries', () => {
    const input = [entry(0x10n * P, 2n)]
    assert.deepEqual(markEager(input, new Set()), { entries: input, eagerPages: 0 })
  })
})

describe('fillEagerGaps', () => {
  const entry = (vaddr: bigint, nrPages: bigint, flags = LAZY, inParent?: boolean): PagemapEntry => ({
    vaddr,
    nrPages,
    flags,
    ...(inParent ? { inParent } : {}),
  })

  test('a short lazy gap between eager neighbours turns eager; the three merge into one entry', () => {
    const input = [
      entry(0x10n * P, 1n),
      entry(0x11n * P, 2n, PE_PRESENT),
      entry(0x13n * P, 3n),
      entry(0x16n * P, 1n, PE_PRESENT),
      entry(0x17n * P, 5n),
    ]
    const { entries, eagerPages } = fillEagerGaps(input, 3)
    assert.deepEqual(entries, [entry(0x10n * P, 1n), entry(0x11n * P, 6n, PE_PRESENT), entry(0x17n * P, 5n)])
    assert.equal(eagerPages, 3)
    // Page counts and order are unchanged: the page data in pages-*.img stays valid.
    const pages = (es: PagemapEntry[]) => es.reduce((n, e) => n + e.nrPages, 0n)
    assert.equal(pages(entries), pages(input))
  })

  test('gaps stay lazy when longer than the limit, at an edge, not adjoining, or of other flags', () => {
    const input = [
      entry(0x10n * P, 1n, PE_PRESENT),
      entry(0x11n * P, 4n), // longer than 3
      entry(0x15n * P, 1n, PE_PRESENT),
      entry(0x16n * P, 1n),
      entry(0x18n * P, 1n, PE_PRESENT), // 0x17 is missing: the gap does not adjoin it
      entry(0x19n * P, 1n),
      entry(0x1an * P, 1n, PE_PRESENT | 1), // in the parent image: not this gap's eager twin
      entry(0x1bn * P, 2n), // at the end: no eager neighbour after it
    ]
    assert.deepEqual(fillEagerGaps(input, 3), { entries: input, eagerPages: 0 })
  })

  test('no gaps: the same entries', () => {
    const input = [entry(0x10n * P, 2n), entry(0x20n * P, 1n, PE_PRESENT)]
    assert.deepEqual(fillEagerGaps(input, 16), { entries: input, eagerPages: 0 })
  })
})

test('applyEagerGaps rewrites every pagemap with a gap and leaves the others as they were', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-ws-'))
  try {
    const gap = [
      { vaddr: 0x10n * P, nrPages: 1n, flags: PE_PRESENT },
      { vaddr: 0x11n * P, nrPages: 2n, flags: LAZY },
      { vaddr: 0x13n * P, nrPages: 1n, flags: PE_PRESENT },
    ]
    const none = pagemapFile([{ vaddr: 0x40n * P, nrPages: 2n, flags: LAZY }])
    await writeFile(join(dir, 'pagemap-1.img'), pagemapFile(gap))
    await writeFile(join(dir, 'pagemap-7.img'), none)
    await writeFile(join(dir, 'pages-1.img'), Buffer.alloc(16))
    assert.equal(await applyEagerGaps(dir, 16), 2)
    assert.deepEqual(readPagemap(await readFile(join(dir, 'pagemap-1.img'))), [
      { vaddr: 0x10n * P, nrPages: 4n, flags: PE_PRESENT },
    ])
    assert.ok((await readFile(join(dir, 'pagemap-7.img'))).equals(none))
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('parseFaults: demand faults per process, page aligned, background transfers ignored', () => {
  const log = [
    '(00.179528) uffd: 6-9: #PF at 0x7fbd175a0000',
    '(00.179554) pr6-2 Read 7fbd175a0000 1 pages',
    '(00.180097) uffd: 6-9: #PF at 0x7fbcdae84123',
    '(00.180100) uffd: 6-9: #PF at 0x7fbd175a0000',
    '(00.185972) uffd: 1-8: #PF at 0x55d0c0001000',
    '(00.190000) uffd: 6-9: uffd_copy: 0x7fbd17000000/4096',
  ].join('\n')
  assert.deepEqual(
    parseFaults(log),
    new Map([
      [6, new Set([0x7fbd175a0000n, 0x7fbcdae84000n])],
      [1, new Set([0x55d0c0001000n])],
    ]),
  )
})

test('applyWorkingSet rewrites only the pagemaps of processes with faults', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-ws-'))
  try {
    const one = pagemapFile([{ vaddr: 0x10n * P, nrPages: 4n, flags: LAZY }])
    const two = pagemapFile([{ vaddr: 0x40n * P, nrPages: 2n, flags: LAZY }])
    await writeFile(join(dir, 'pagemap-1.img'), one)
    await writeFile(join(dir, 'pagemap-7.img'), two)
    const eager = await applyWorkingSet(
      dir,
      new Map([
        [1, new Set([0x12n * P])],
        [9, new Set([0x99n * P])], // no such process image: ignored
      ]),
    )
    assert.equal(eager, 1)
    assert.deepEqual(readPagemap(await readFile(join(dir, 'pagemap-1.img'))), [
      { vaddr: 0x10n * P, nrPages: 2n, flags: LAZY },
      { vaddr: 0x12n * P, nrPages: 1n, flags: PE_PRESENT },
      { vaddr: 0x13n * P, nrPages: 1n, flags: LAZY },
    ])
    assert.ok((await readFile(join(dir, 'pagemap-7.img'))).equals(two))
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

describe('profileSettled', () => {
  const little = PROFILE_SETTLED_PAGES - 1
  test('runs the minimum number of rounds even when the first ones add nothing', () => {
    assert.equal(profileSettled([]), false)
    assert.equal(profileSettled(Array<number>(PROFILE_MIN_ROUNDS - 1).fill(0)), false)
    assert.equal(profileSettled(Array<number>(PROFILE_MIN_ROUNDS).fill(0)), true)
  })

  test('a round that adds little after one that added much does not end it', () => {
    // ts-compile's rounds made 59, then 581, then 0 pages eager: one quiet round proves nothing.
    const rounds = [59, 581, 0, 400, little]
    assert.equal(profileSettled(rounds), false)
    assert.equal(profileSettled([...rounds, 0]), true)
  })

  test('ends at the maximum even while rounds still add pages', () => {
    assert.equal(profileSettled(Array<number>(PROFILE_MAX_ROUNDS - 1).fill(500)), false)
    assert.equal(profileSettled(Array<number>(PROFILE_MAX_ROUNDS).fill(500)), true)
  })

  test('a round that adds exactly the threshold is not little', () => {
    const base = Array<number>(PROFILE_MIN_ROUNDS - 2).fill(0)
    assert.equal(profileSettled([...base, PROFILE_SETTLED_PAGES, little]), false)
    assert.equal(profileSettled([...base, little, little]), true)
  })
})
