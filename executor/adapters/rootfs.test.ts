import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import {
  collectImageRootfs,
  ensureImageRootfs,
  imageRootfsDir,
  instanceResolvConf,
  readHostResolvConf,
  ROOTFS_IDLE_MS,
  touchImageRootfs,
} from './rootfs.ts'

test("instances get the host's resolvers, less the loopback ones they cannot reach", () => {
  const conf = instanceResolvConf(
    [
      '# comment',
      'nameserver 127.0.0.53',
      'nameserver 10.255.255.53',
      'nameserver ::1',
      'nameserver 2001:db8::53',
      'search example.internal',
      'options edns0 trust-ad',
      'bogus line',
      '',
    ].join('\n'),
  )
  const lines = conf.split('\n').filter((l) => l && !l.startsWith('#'))
  assert.deepEqual(lines, [
    'nameserver 10.255.255.53',
    'nameserver 2001:db8::53',
    'search example.internal',
    'options edns0 trust-ad',
  ])
  assert.doesNotMatch(conf, /no nameserver/)
})

test('a host with only a loopback resolver leaves instances without one, and says so', () => {
  const conf = instanceResolvConf('nameserver 127.0.0.53\noptions edns0\n')
  assert.match(conf, /# no nameserver reachable from instances \(the host names only loopback ones\)/)
  assert.doesNotMatch(conf, /^nameserver/m)
  assert.match(conf, /^options edns0$/m)
  assert.match(instanceResolvConf(''), /# no nameserver reachable from instances\n/)
})

test('an unpacked rootfs carries that resolv.conf and a hosts file', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-rootfs-'))
  try {
    const host = join(dir, 'host-resolv.conf')
    await writeFile(host, 'nameserver 127.0.0.1\nnameserver 192.0.2.53\n')
    let exports = 0
    const exportTo = async (_id: string, to: string) => {
      exports++
      await writeFile(join(to, 'app'), 'x')
    }
    const rootfs = await ensureImageRootfs(dir, 'sha256:abc', exportTo, host)
    assert.match(await readFile(join(rootfs, 'etc', 'resolv.conf'), 'utf8'), /^nameserver 192\.0\.2\.53$/m)
    assert.doesNotMatch(await readFile(join(rootfs, 'etc', 'resolv.conf'), 'utf8'), /127\.0\.0\.1/)
    assert.match(await readFile(join(rootfs, 'etc', 'hosts'), 'utf8'), /^127\.0\.0\.1\tlocalhost$/m)
    assert.equal(await ensureImageRootfs(dir, 'sha256:abc', exportTo, host), rootfs)
    assert.equal(exports, 1, 'unpacked once')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test("behind systemd-resolved's stub, the upstream servers it uses are read instead", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-resolv-'))
  try {
    const stub = join(dir, 'resolv.conf')
    const upstream = join(dir, 'upstream.conf')
    await writeFile(stub, 'nameserver 127.0.0.53\noptions edns0\n')
    await writeFile(upstream, 'nameserver 198.51.100.1\n')
    assert.equal(await readHostResolvConf(stub, upstream), 'nameserver 198.51.100.1\n')
    assert.equal(await readHostResolvConf(stub, join(dir, 'none')), 'nameserver 127.0.0.53\noptions edns0\n')
    await writeFile(stub, 'nameserver 192.0.2.1\n')
    assert.equal(await readHostResolvConf(stub, upstream), 'nameserver 192.0.2.1\n')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('unpacked images no snapshot needs, unused and idle, are collected; the rest stay', async () => {
  const stateDir = await mkdtemp(join(tmpdir(), 'initless-rootfs-gc-'))
  try {
    const unpack = (id: string) =>
      ensureImageRootfs(stateDir, `sha256:${id}`, (_id, dir) => writeFile(join(dir, 'app'), id), '/dev/null')
    for (const id of ['kept', 'mounted', 'recent', 'idle']) await unpack(id)
    const now = Date.now()
    const long = new Date(now - ROOTFS_IDLE_MS - 60_000)
    for (const id of ['kept', 'mounted', 'idle']) {
      await utimes(join(stateDir, 'images', id, 'complete'), long, long)
    }
    // An unpack that never completed: old, and one still being written.
    await mkdir(join(stateDir, 'images', 'broken', 'rootfs.tmp-1-1'), { recursive: true })
    await utimes(join(stateDir, 'images', 'broken'), long, long)
    await mkdir(join(stateDir, 'images', 'unpacking', 'rootfs.tmp-2-2'), { recursive: true })
    // What a collection that stopped midway left.
    await mkdir(join(stateDir, 'images', '.trash-gone-1'), { recursive: true })

    const mountinfo = `overlay /x overlay rw lowerdir=${imageRootfsDir(stateDir, 'sha256:mounted')}`
    const removed = await collectImageRootfs(
      stateDir,
      new Set(['sha256:kept']),
      (dir) => mountinfo.includes(dir),
      ROOTFS_IDLE_MS,
      now,
    )
    assert.deepEqual(removed.sort(), ['sha256:broken', 'sha256:idle'])
    assert.deepEqual((await readdir(join(stateDir, 'images'))).sort(), [
      'kept',
      'mounted',
      'recent',
      'unpacking',
    ])

    // A bake's mark makes it recent again.
    await touchImageRootfs(stateDir, 'sha256:kept')
    const touched = (await stat(join(stateDir, 'images', 'kept', 'complete'))).mtimeMs
    assert.ok(touched > now - 60_000, 'the marker records the bake')
    assert.deepEqual(
      await collectImageRootfs(stateDir, new Set(), (dir) => mountinfo.includes(dir), ROOTFS_IDLE_MS, now),
      [],
      'no snapshot needs it any more, but a bake just marked it',
    )
  } finally {
    await rm(stateDir, { recursive: true, force: true })
  }
})
