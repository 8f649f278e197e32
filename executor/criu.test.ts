import assert from 'node:assert/strict'
import { test } from 'node:test'
import { criuRestoreArgs, type CriuRestoreRequest } from './criu.ts'

const req: CriuRestoreRequest = {
  imagesDir: '/state/snapshots/fn/k/images',
  workDir: '/state/instances/i1/criu',
  root: '/state/instances/i1/bundle/rootfs',
  pidFile: '/state/instances/i1/pid',
  netnsPath: '/var/run/netns/initless-i1',
  cgroupRoot: '/initless/i1',
  externalMounts: [
    { key: '/sys/firmware', source: '/state/empty' },
    { key: '/dev/null', source: '/dev/null' },
  ],
  lazy: true,
  outputFd: 9,
}

/** The value following `flag` (each occurrence). */
function values(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1] ?? ''] : []))
}

test('criuRestoreArgs: what runc sends CRIU for `runc restore -d`, as options', () => {
  const args = criuRestoreArgs(req, ['/dev/null', 'pipe:[77]', 'pipe:[77]'])
  assert.equal(args[0], 'restore')
  assert.deepEqual(values(args, '--images-dir'), [req.imagesDir])
  assert.deepEqual(values(args, '--work-dir'), [req.workDir])
  assert.deepEqual(values(args, '--root'), [req.root])
  assert.deepEqual(values(args, '--pidfile'), [req.pidFile])
  assert.deepEqual(values(args, '--cgroup-root'), ['/initless/i1'])
  assert.deepEqual(values(args, '--network-lock'), ['skip'])
  // The namespace arrives as fd 3 under runc's key; the stdio pipes as the fds they were.
  assert.deepEqual(values(args, '--inherit-fd'), ['fd[3]:extRootNetNS', 'fd[1]:pipe:[77]', 'fd[2]:pipe:[77]'])
  assert.deepEqual(values(args, '--ext-mount-map'), ['/sys/firmware:/state/empty', '/dev/null:/dev/null'])
  for (const flag of [
    '--restore-detached',
    '--evasive-devices',
    '--mntns-compat-mode',
    '--manage-cgroups=soft',
    '--lazy-pages',
  ])
    assert.ok(args.includes(flag), flag)
  assert.ok(args.includes('-v2'))
})

test('criuRestoreArgs: an eager restore has no --lazy-pages; the log level can be raised', () => {
  const args = criuRestoreArgs({ ...req, lazy: false, logLevel: 4 }, ['/dev/null', '/dev/null', '/dev/null'])
  assert.ok(!args.includes('--lazy-pages'))
  assert.ok(args.includes('-v4') && !args.includes('-v2'))
  assert.deepEqual(values(args, '--inherit-fd'), ['fd[3]:extRootNetNS'])
})
