import assert from 'node:assert/strict'
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { buildOciSpec, criuExternalMounts } from './oci-spec.ts'
import { createSecretFiles, secretFilesRoot } from './secret-files.ts'

const isRoot = process.getuid?.() === 0

/** Records tmpfs mounts instead of making them (the directory stays a plain one). */
function fakeMounter() {
  const mounted: string[] = []
  return {
    mounted,
    mounter: {
      mountTmpfs: async (target: string, options: string) => void mounted.push(`${target} ${options}`),
      unmount: async (target: string) => void mounted.splice(mounted.indexOf(target), 1),
      list: async (prefix: string) =>
        mounted.map((m) => m.split(' ')[0]!).filter((p) => p.startsWith(prefix)),
    },
  }
}

test('secret files: one tmpfs mounted once, a 0755 directory per instance, files 0400 of the owner', async (t) => {
  const stateDir = await mkdtemp(join(tmpdir(), 'secret-files-'))
  t.after(() => rm(stateDir, { recursive: true, force: true }))
  const { mounter, mounted } = fakeMounter()
  const files = createSecretFiles({ stateDir, mounter })
  const owner = isRoot ? { uid: 1000, gid: 1001 } : { uid: process.getuid!(), gid: process.getgid!() }
  const a = await files.prepare('a')
  const b = await files.fill('b', [{ scope: 'fn', name: 'token', value: Buffer.from('v1') }], owner)
  assert.deepEqual(mounted, [`${secretFilesRoot(stateDir)} mode=0700,size=256m,nosuid,nodev,noexec`])
  assert.equal((await stat(a)).mode & 0o777, 0o755)
  assert.deepEqual(await readdir(a), [])
  const st = await stat(join(b, 'token'))
  assert.equal(st.mode & 0o777, 0o400)
  assert.deepEqual([st.uid, st.gid], [owner.uid, owner.gid])
  assert.equal(await readFile(join(b, 'token'), 'utf8'), 'v1')
  await files.remove('b')
  await files.remove('b')
  assert.deepEqual(await readdir(secretFilesRoot(stateDir)), ['a'])
  await files.close()
  assert.deepEqual(mounted, [])
})

test('oci spec: /run/secrets is a read-only bind only for functions with secrets, external to CRIU', () => {
  const input = {
    hostname: 'fn',
    rootfs: '/r',
    args: ['x'],
    env: [],
    cwd: '/',
    uid: 0,
    gid: 0,
    emptyDir: '/empty',
    netnsPath: '/ns',
    cgroupsPath: '/initless/x',
    cgroupMounts: [],
    memoryBytes: 1 << 26,
    pids: 64,
  }
  const without = buildOciSpec(input)
  assert.ok(!JSON.stringify(without).includes('/run/secrets'))
  const spec = buildOciSpec({ ...input, secretsSource: '/state/secrets/id' })
  const mount = (spec.mounts as { destination: string; source: string; options: string[] }[]).find(
    (m) => m.destination === '/run/secrets',
  )
  assert.deepEqual(mount?.options, ['bind', 'ro', 'nosuid', 'noexec', 'nodev'])
  assert.ok(
    criuExternalMounts(spec).some((m) => m.key === '/run/secrets' && m.source === '/state/secrets/id'),
  )
})
