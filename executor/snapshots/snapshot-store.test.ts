import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  truncate,
  utimes,
  writeFile,
} from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import {
  createSnapshotStore,
  directorySize,
  type PendingSnapshot,
  type Snapshot,
  type SnapshotIdentity,
  type SnapshotStore,
} from './snapshot-store.ts'
import { flipMiddleByte } from '../../test/support/files.ts'

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex')

let tmp: string
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'initless-snapshots-'))
})
after(async () => {
  await rm(tmp, { recursive: true, force: true })
})

let counter = 0
/** A fresh store under a state dir that does not exist yet. */
function freshStore(): { store: SnapshotStore; stateDir: string; root: string } {
  const stateDir = join(tmp, `state-${++counter}`)
  return { store: createSnapshotStore({ stateDir }), stateDir, root: join(stateDir, 'snapshots') }
}

const ID: SnapshotIdentity = {
  fn: 'hello',
  manifestHash: 'a'.repeat(64),
  imageId: 'sha256:1111',
  criuVersion: '4.2.1',
  kernel: '6.1.0-18-amd64',
  layout: 2,
  prefetch: 1,
  seccomp: '0123456789abcdef',
}

/** Fill a pending snapshot with 1000 bytes of images and 24 bytes of upper layer, then commit it. */
async function bake(
  store: SnapshotStore,
  id: SnapshotIdentity,
  createdAt = Date.now(),
): Promise<{ pending: PendingSnapshot; snapshot: Snapshot }> {
  const pending = await store.begin(id)
  await writeFile(join(pending.imagesDir, 'pages-1.img'), Buffer.alloc(1000, 1))
  await mkdir(join(pending.upperDir, 'tmp'), { recursive: true })
  await writeFile(join(pending.upperDir, 'tmp', 'cache'), 'x'.repeat(24))
  const snapshot = await pending.commit({ ...id, bakeMs: 1234, warmupRequests: 60, createdAt, port: 8080 })
  return { pending, snapshot }
}

describe('snapshot store', () => {
  test('the store root and function folder are created 0700', async () => {
    const { store, stateDir, root } = freshStore()
    const pending = await store.begin(ID)
    assert.equal((await stat(root)).mode & 0o777, 0o700)
    assert.equal((await stat(stateDir)).mode & 0o777, 0o700)
    assert.equal((await stat(join(root, 'hello'))).mode & 0o777, 0o700)
    assert.equal((await stat(pending.imagesDir)).mode & 0o777, 0o700)
    await pending.discard()
  })

  test('begin/commit makes a snapshot that find() returns with its meta and size', async () => {
    const { store, root } = freshStore()
    const createdAt = Date.now()
    const { pending, snapshot } = await bake(store, ID, createdAt)
    const key = store.snapshotKey(ID)
    assert.match(key, /^[0-9a-f]{20}$/)
    // Written under a temporary name, renamed into place.
    assert.ok(pending.dir.startsWith(join(root, 'hello', `.tmp-${key}-`)), pending.dir)
    const expectedMeta = {
      ...ID,
      key,
      sizeBytes: 1024,
      bakeMs: 1234,
      warmupRequests: 60,
      createdAt,
      port: 8080,
      files: { 'pages-1.img': 1000 },
      checksums: {
        algorithm: 'sha256',
        files: {
          'images/pages-1.img': { size: 1000, hash: sha256(Buffer.alloc(1000, 1)) },
          'upper/tmp/cache': { size: 24, hash: sha256('x'.repeat(24)) },
        },
      },
    }
    const dir = join(root, 'hello', key)
    assert.deepEqual(snapshot, {
      meta: expectedMeta,
      dir,
      imagesDir: join(dir, 'images'),
      upperDir: join(dir, 'upper'),
    })
    assert.deepEqual(await store.find(ID), snapshot)
    assert.deepEqual(await readdir(join(root, 'hello')), [key])
    const metaFile = join(dir, 'meta.json')
    assert.deepEqual(JSON.parse(await readFile(metaFile, 'utf8')), expectedMeta)
    assert.equal((await stat(metaFile)).mode & 0o777, 0o600)
    assert.deepEqual(await store.latest('hello'), snapshot)
  })

  const changed: Array<[string, Partial<SnapshotIdentity>]> = [
    ['manifestHash', { manifestHash: 'b'.repeat(64) }],
    ['imageId', { imageId: 'sha256:2222' }],
    ['criuVersion', { criuVersion: '4.2.2' }],
    ['kernel', { kernel: '6.12.0' }],
    ['layout', { layout: 3 }],
    ['prefetch', { prefetch: 0 }],
    ['seccomp', { seccomp: 'unconfined' }],
    ['fn', { fn: 'other' }],
  ]
  for (const [field, change] of changed) {
    test(`a changed ${field} has another key and is not found`, async () => {
      const { store } = freshStore()
      await bake(store, ID)
      const other = { ...ID, ...change }
      assert.notEqual(store.snapshotKey(other), store.snapshotKey(ID))
      assert.equal(await store.find(other), undefined)
      assert.ok(await store.find(ID))
    })
  }

  test(
    'commit syncs a layer holding a fifo and a link without opening either',
    { timeout: 10_000 },
    async () => {
      const { store } = freshStore()
      const pending = await store.begin(ID)
      await writeFile(join(pending.imagesDir, 'pages-1.img'), Buffer.alloc(10, 1))
      await mkdir(join(pending.upperDir, 'run'), { recursive: true })
      // Opening a fifo for reading blocks until a writer comes: a sync that opened it never ends.
      execFileSync('mkfifo', [join(pending.upperDir, 'run', 'pipe')])
      await symlink('/nowhere', join(pending.upperDir, 'run', 'dangling'))
      const snapshot = await pending.commit({
        ...ID,
        bakeMs: 1,
        warmupRequests: 1,
        createdAt: Date.now(),
        port: 8080,
      })
      assert.equal((await stat(join(snapshot.upperDir, 'run', 'pipe'))).isFIFO(), true)
      assert.deepEqual(await store.find(ID), snapshot)
    },
  )

  test('imageIds: the images of the current snapshots, not of retired or broken ones', async () => {
    const { store } = freshStore()
    assert.deepEqual(await store.imageIds(), new Set())
    await bake(store, ID)
    await bake(store, { ...ID, fn: 'other', imageId: 'sha256:2222' })
    const { snapshot: broken } = await bake(store, { ...ID, fn: 'third', imageId: 'sha256:3333' })
    await store.markBroken(broken, 'test')
    assert.deepEqual(await store.imageIds(), new Set(['sha256:1111', 'sha256:2222']))
    await store.retire('other', new Set(), 0)
    assert.deepEqual(await store.imageIds(), new Set(['sha256:1111']))
  })

  test('snapshotKey is deterministic', () => {
    const { store } = freshStore()
    assert.equal(store.snapshotKey({ ...ID }), store.snapshotKey(ID))
  })

  test('a meta.json whose inputs disagree with the key is not trusted', async () => {
    const { store } = freshStore()
    const { snapshot } = await bake(store, ID)
    await writeFile(
      join(snapshot.dir, 'meta.json'),
      JSON.stringify({ ...snapshot.meta, imageId: 'sha256:9' }),
    )
    assert.equal(await store.find(ID), undefined)
    await writeFile(join(snapshot.dir, 'meta.json'), '{not json')
    assert.equal(await store.find(ID), undefined)
  })

  test('committing a second snapshot keeps the first; retire() removes what is not kept', async () => {
    const { store, root } = freshStore()
    const first = await bake(store, ID, 1000)
    const id2 = { ...ID, imageId: 'sha256:2222' }
    const second = await bake(store, id2, 2000)
    assert.deepEqual(await store.find(ID), first.snapshot)
    assert.deepEqual(await store.find(id2), second.snapshot)
    assert.deepEqual(await store.latest('hello'), second.snapshot)
    // Too young to retire: a bake just committed is not recorded as kept anywhere yet.
    assert.deepEqual(await store.retire('hello', new Set([second.snapshot.meta.key]), Date.now()), [])
    assert.deepEqual(await store.retire('hello', new Set([second.snapshot.meta.key]), 0), [
      first.snapshot.meta.key,
    ])
    assert.equal(await store.find(ID), undefined)
    const names = await readdir(join(root, 'hello'))
    assert.equal(names.length, 2)
    assert.ok(names.includes(second.snapshot.meta.key))
    assert.ok(
      names.some((n) => n.startsWith(`.retired-${first.snapshot.meta.key}-`)),
      names.join(' '),
    )
  })

  test('re-baking the same inputs replaces the snapshot in place', async () => {
    const { store } = freshStore()
    await bake(store, ID, 1000)
    const again = await bake(store, ID, 2000)
    assert.deepEqual(await store.find(ID), again.snapshot)
    assert.equal((await store.find(ID))?.meta.createdAt, 2000)
  })

  test('usable: until replaced in place, retired or marked broken', async () => {
    const { store } = freshStore()
    const first = await bake(store, ID, 1000)
    assert.equal(await store.usable(first.snapshot), true)
    const again = await bake(store, ID, 2000)
    assert.equal(await store.usable(first.snapshot), false, 'same path, new contents')
    assert.equal(await store.usable(again.snapshot), true)
    const newer = await bake(store, { ...ID, imageId: 'sha256:2222' }, 3000)
    assert.equal(await store.usable(again.snapshot), true, 'a newer bake of other inputs keeps it')
    await store.retire('hello', new Set([newer.snapshot.meta.key]), 0)
    assert.equal(await store.usable(again.snapshot), false, 'retired')
    const { snapshot } = await bake(store, { ...ID, kernel: 'other' })
    await store.markBroken(snapshot, 'restore failed')
    assert.equal(await store.usable(snapshot), false)
  })

  test('markBroken hides a snapshot from find and latest', async () => {
    const { store } = freshStore()
    const { snapshot } = await bake(store, ID)
    await store.markBroken(snapshot, 'restore failed: exit 1')
    assert.equal(await store.find(ID), undefined)
    assert.equal(await store.latest('hello'), undefined)
    assert.match(
      await readFile(join(snapshot.dir, 'broken'), 'utf8'),
      /^\d{4}-\d\d-\d\dT.* restore failed: exit 1\n$/,
    )
  })

  test('discard leaves nothing behind', async () => {
    const { store, root } = freshStore()
    const pending = await store.begin(ID)
    await writeFile(join(pending.imagesDir, 'core-1.img'), 'core')
    await pending.discard()
    assert.deepEqual(await readdir(join(root, 'hello')), [])
    assert.equal(await store.find(ID), undefined)
    assert.equal(await store.latest('hello'), undefined)
  })

  test('latest of an unknown function is undefined', async () => {
    const { store } = freshStore()
    assert.equal(await store.latest('nothing'), undefined)
  })

  test('collect deletes retired snapshots unless in use, and bakes abandoned for over an hour', async () => {
    const { store, root } = freshStore()
    const fnDir = join(root, 'hello')
    await bake(store, ID, 1000)
    await bake(store, { ...ID, imageId: 'sha256:2' }, 2000)
    const current = await bake(store, { ...ID, imageId: 'sha256:3' }, 3000)
    await store.retire('hello', new Set([current.snapshot.meta.key]), 0)
    const retired = (await readdir(fnDir)).filter((n) => n.startsWith('.retired-')).map((n) => join(fnDir, n))
    assert.equal(retired.length, 2)
    const [inUse, unused] = retired as [string, string]

    const abandoned = await store.begin({ ...ID, imageId: 'sha256:4' })
    const twoHoursAgo = new Date(Date.now() - 2 * 3_600_000)
    await utimes(abandoned.dir, twoHoursAgo, twoHoursAgo)
    const fresh = await store.begin({ ...ID, imageId: 'sha256:5' })

    const seen: string[] = []
    const removed = await store.collect((dir) => {
      seen.push(dir)
      return dir === inUse
    })
    assert.deepEqual(removed.sort(), [abandoned.dir, unused].sort())
    assert.ok(seen.includes(inUse))
    const left = (await readdir(fnDir)).map((n) => join(fnDir, n)).sort()
    assert.deepEqual(left, [current.snapshot.dir, fresh.dir, inUse].sort())
    assert.deepEqual(await store.find({ ...ID, imageId: 'sha256:3' }), current.snapshot)

    // Once nothing uses it any more, the last retired snapshot goes too.
    assert.deepEqual(await store.collect(() => false), [inUse])
  })

  test('collect on an empty store removes nothing', async () => {
    const { store } = freshStore()
    assert.deepEqual(await store.collect(() => false), [])
  })

  test('remove deletes every snapshot of a function', async () => {
    const { store, root } = freshStore()
    await bake(store, ID)
    await store.remove('hello')
    assert.equal(await store.find(ID), undefined)
    assert.deepEqual(await readdir(root), [])
  })
})

test('directorySize sums regular files recursively', async () => {
  const dir = await mkdtemp(join(tmp, 'size-'))
  await mkdir(join(dir, 'a', 'b'), { recursive: true })
  await writeFile(join(dir, 'one'), 'x'.repeat(10))
  await writeFile(join(dir, 'a', 'two'), 'x'.repeat(100))
  await writeFile(join(dir, 'a', 'b', 'three'), '')
  assert.equal(await directorySize(dir), 110)
})

test('verify: a truncated or missing image file is ERR_SNAPSHOT_CORRUPT', async () => {
  const root = await mkdtemp(join(tmpdir(), 'initless-verify-'))
  after(() => rm(root, { recursive: true, force: true }))
  const store = createSnapshotStore({ stateDir: root })
  const pending = await store.begin(ID)
  await writeFile(join(pending.imagesDir, 'pages-1.img'), Buffer.alloc(1000))
  await writeFile(join(pending.imagesDir, 'core-1.img'), Buffer.alloc(10))
  const snap = await pending.commit({ ...ID, bakeMs: 1, warmupRequests: 0, createdAt: 1, port: 8080 })
  await store.verify(snap)
  await truncate(join(snap.imagesDir, 'pages-1.img'), 10)
  await rm(join(snap.imagesDir, 'core-1.img'))
  await assert.rejects(store.verify(snap), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ERR_SNAPSHOT_CORRUPT')
    assert.match(err.message, /core-1\.img is missing; pages-1\.img has 10 bytes, expected 1000/)
    return true
  })
})

describe('snapshot checksums', () => {
  const corruptWith = (re: RegExp) => (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ERR_SNAPSHOT_CORRUPT')
    assert.match(err.message, re)
    return true
  }

  test('commit leaves the snapshot 0700 and its images and meta.json 0600', async () => {
    const { store } = freshStore()
    const { snapshot } = await bake(store, ID)
    assert.equal((await stat(snapshot.dir)).mode & 0o777, 0o700)
    assert.equal((await stat(snapshot.imagesDir)).mode & 0o777, 0o700)
    for (const name of await readdir(snapshot.imagesDir))
      assert.equal((await stat(join(snapshot.imagesDir, name))).mode & 0o777, 0o600, name)
    assert.equal((await stat(join(snapshot.dir, 'meta.json'))).mode & 0o777, 0o600)
  })

  test('a byte flipped mid-file (same size) fails the first verify of another store', async () => {
    const { store, stateDir } = freshStore()
    const { snapshot } = await bake(store, ID)
    await flipMiddleByte(join(snapshot.imagesDir, 'pages-1.img'))
    // Another process (an executor restarted) has not checked it yet.
    const other = createSnapshotStore({ stateDir })
    const found = (await other.find(ID))!
    await assert.rejects(other.verify(found), corruptWith(/images\/pages-1\.img: sha256 checksum mismatch/))
  })

  test('a write to an image after the last check is caught, even with the times put back', async () => {
    const { store } = freshStore()
    const { snapshot } = await bake(store, ID)
    await store.verify(snapshot)
    const file = join(snapshot.imagesDir, 'pages-1.img')
    const before = await stat(file)
    await flipMiddleByte(file)
    await utimes(file, before.atime, before.mtime)
    await assert.rejects(store.verify(snapshot), corruptWith(/checksum mismatch/))
  })

  test('the layer is checked too: a changed, added or replaced file fails the scrub', async () => {
    const { store } = freshStore()
    const { snapshot } = await bake(store, ID)
    await store.scrub(snapshot)
    await writeFile(join(snapshot.upperDir, 'tmp', 'cache'), 'y'.repeat(24))
    await assert.rejects(store.scrub(snapshot), corruptWith(/upper\/tmp\/cache: sha256 checksum mismatch/))
    await writeFile(join(snapshot.upperDir, 'tmp', 'cache'), 'x'.repeat(24))
    await store.scrub(snapshot)
    await symlink('/etc/shadow', join(snapshot.upperDir, 'tmp', 'link'))
    await assert.rejects(store.scrub(snapshot), corruptWith(/upper\/tmp\/link was added/))
  })

  test('once checked, verify only stats the images: a layer change waits for the scrub', async () => {
    const { store, stateDir } = freshStore()
    await bake(store, ID)
    const other = createSnapshotStore({ stateDir })
    const found = (await other.find(ID))!
    await other.verify(found)
    await writeFile(join(found.upperDir, 'tmp', 'cache'), 'z'.repeat(24))
    await other.verify(found)
    await assert.rejects(other.scrub(found), corruptWith(/upper\/tmp\/cache: sha256 checksum mismatch/))
    // Found corrupt once, it is checked in full again at the next verify.
    await assert.rejects(other.verify(found), corruptWith(/checksum mismatch/))
  })
})
