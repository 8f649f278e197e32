import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { ensureImageRootfs, instanceResolvConf, readHostResolvConf } from './rootfs.ts'

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
