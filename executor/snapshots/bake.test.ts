import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { isInitlessError } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { manifestHash, parseManifest } from '../../shared/manifest.ts'
import { bakedManifest } from '../../shared/versions.ts'
import { processSpecFor, snapshotIdentity } from './bake.ts'
import { seccompId } from '../sandbox/seccomp.ts'
import { DEFAULT_SECCOMP_PROFILE } from '../sandbox/seccomp-profile.ts'
import { WORKING_SET_VERSION } from './working-set.ts'
import { SANDBOX_LAYOUT_VERSION } from '../sandbox/oci-spec.ts'
import type { ImageConfig } from '../adapters/docker.ts'

const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

const image = (over: Partial<ImageConfig> = {}): ImageConfig => ({
  id: 'sha256:abcd',
  env: ['PATH=/opt/node/bin:/usr/bin:/bin', 'NODE_ENV=production'],
  cmd: ['server.js'],
  entrypoint: ['node'],
  workdir: '/app',
  user: '',
  sizeBytes: 100,
  created: '2024-01-01T00:00:00Z',
  ...over,
})

const manifest = (extra = '') => parseManifest(`port: 8080\n${extra}`, 'function.yaml', 'hello')

describe('processSpecFor', () => {
  test("the image's entrypoint + cmd, env, workdir and root user by default", () => {
    assert.deepEqual(processSpecFor(image(), manifest()), {
      args: ['node', 'server.js'],
      env: ['PATH=/opt/node/bin:/usr/bin:/bin', 'NODE_ENV=production'],
      cwd: '/app',
      uid: 0,
      gid: 0,
    })
  })

  const commands: Array<[string, Partial<ImageConfig>, string, string[]]> = [
    ['entrypoint + cmd', {}, '', ['node', 'server.js']],
    ['cmd only', { entrypoint: [], cmd: ['python3', 'app.py'] }, '', ['python3', 'app.py']],
    ['entrypoint only', { entrypoint: ['/bin/fn'], cmd: [] }, '', ['/bin/fn']],
    ['manifest command replaces both', {}, 'command: [node, other.js]', ['node', 'other.js']],
    [
      'manifest command when the image has none',
      { entrypoint: [], cmd: [] },
      'command: [/bin/sh, -c, run]',
      ['/bin/sh', '-c', 'run'],
    ],
  ]
  for (const [name, img, yaml, args] of commands) {
    test(`command: ${name}`, () => {
      assert.deepEqual(processSpecFor(image(img), manifest(yaml)).args, args)
    })
  }

  test('no command anywhere is ERR_MANIFEST_INVALID naming the function', () => {
    assert.throws(
      () => processSpecFor(image({ entrypoint: [], cmd: [] }), manifest()),
      (err: unknown) => {
        assert.ok(isInitlessError(err, 'ERR_MANIFEST_INVALID'))
        assert.equal(err.message, 'hello: the image has no CMD/ENTRYPOINT and the manifest no command')
        return true
      },
    )
  })

  const envCases: Array<[string, readonly string[], string, string[]]> = [
    ['image env kept', ['PATH=/bin', 'A=1'], '', ['PATH=/bin', 'A=1']],
    [
      'manifest overrides the image, in place',
      ['PATH=/bin', 'A=1', 'B=2'],
      'env:\n  A: x',
      ['PATH=/bin', 'A=x', 'B=2'],
    ],
    [
      'manifest adds after the image',
      ['PATH=/bin'],
      'env:\n  N: 3\n  T: true',
      ['PATH=/bin', 'N=3', 'T=true'],
    ],
    ['PATH default added when the image has none', ['A=1'], '', ['A=1', DEFAULT_PATH]],
    ['PATH default with an empty image env', [], '', [DEFAULT_PATH]],
    ['manifest PATH overrides the default', [], 'env:\n  PATH: /custom', ['PATH=/custom']],
    ['values keep their = signs', ['PATH=/bin', 'OPTS=a=b=c'], '', ['PATH=/bin', 'OPTS=a=b=c']],
    ['empty values are kept', ['PATH=/bin', 'EMPTY='], '', ['PATH=/bin', 'EMPTY=']],
    ['entries without a name are dropped', ['PATH=/bin', '=x', 'NOEQUALS'], '', ['PATH=/bin']],
    ['a later duplicate in the image wins', ['PATH=/bin', 'A=1', 'A=2'], '', ['PATH=/bin', 'A=2']],
  ]
  for (const [name, env, yaml, expected] of envCases) {
    test(`env: ${name}`, () => {
      assert.deepEqual(processSpecFor(image({ env }), manifest(yaml)).env, expected)
    })
  }

  const workdirs: Array<[string, string, string]> = [
    ['/app', '', '/app'],
    ['/app', 'workdir: /srv', '/srv'],
    ['/', '', '/'],
  ]
  for (const [imageDir, yaml, expected] of workdirs) {
    test(`workdir: image '${imageDir}', manifest '${yaml}' -> ${expected}`, () => {
      assert.equal(processSpecFor(image({ workdir: imageDir }), manifest(yaml)).cwd, expected)
    })
  }

  const users: Array<[string, number, number]> = [
    ['', 0, 0],
    ['0', 0, 0],
    ['1000', 1000, 1000],
    ['1000:50', 1000, 50],
  ]
  for (const [user, uid, gid] of users) {
    test(`user '${user}' -> ${uid}/${gid}`, () => {
      const spec = processSpecFor(image({ user }), manifest())
      assert.deepEqual([spec.uid, spec.gid], [uid, gid])
    })
  }

  test('a named image user is rejected', () => {
    assert.throws(
      () => processSpecFor(image({ user: 'node' }), manifest()),
      /image user 'node' is not numeric/,
    )
  })
})

describe('snapshotIdentity', () => {
  const fn = (extra = ''): FunctionDef => ({
    name: 'hello',
    dir: '/srv/functions/hello',
    manifestFile: '/srv/functions/hello/function.yaml',
    manifest: manifest(extra),
  })
  const versions = { criuVersion: '4.2.1', kernel: '6.1.0-18-amd64' }

  test('is the function, manifest hash, image id, host versions, sandbox layout and working-set profile', () => {
    const f = fn()
    assert.deepEqual(snapshotIdentity(f, image(), versions), {
      fn: 'hello',
      manifestHash: manifestHash(bakedManifest(f.manifest)),
      imageId: 'sha256:abcd',
      criuVersion: '4.2.1',
      kernel: '6.1.0-18-amd64',
      layout: SANDBOX_LAYOUT_VERSION,
      prefetch: WORKING_SET_VERSION,
      seccomp: seccompId(DEFAULT_SECCOMP_PROFILE),
    })
  })

  test('follows the system-call filter: unconfined and the default profile differ', () => {
    const a = snapshotIdentity(fn(), image(), versions)
    const b = snapshotIdentity(fn('security:\n  seccomp: unconfined'), image(), versions)
    assert.equal(b.seccomp, 'unconfined')
    assert.match(a.seccomp, /^[0-9a-f]{16}$/)
    // A profile file is hashed by the baker once read (seccomp.ts resolveSeccomp).
    assert.equal(
      snapshotIdentity(fn(), image(), versions, true, 'feedfacefeedface').seccomp,
      'feedfacefeedface',
    )
  })

  test('no working-set profile when prefetch is off or the policy never restores lazily', () => {
    assert.equal(snapshotIdentity(fn(), image(), versions, false).prefetch, 0)
    assert.equal(snapshotIdentity(fn('restore:\n  policy: eager'), image(), versions).prefetch, 0)
    assert.equal(
      snapshotIdentity(fn('restore:\n  policy: lazy'), image(), versions).prefetch,
      WORKING_SET_VERSION,
    )
  })

  test('follows manifest changes, except in the live fields (scaling, timeouts, description)', () => {
    const a = snapshotIdentity(fn(), image(), versions)
    const b = snapshotIdentity(fn('resources:\n  memory: 256Mi'), image(), versions)
    assert.notEqual(a.manifestHash, b.manifestHash)
    assert.deepEqual(snapshotIdentity(fn(), image(), versions), a)
    const live = snapshotIdentity(
      fn('scaling:\n  concurrency: 2\ntimeouts:\n  request: 5s'),
      image(),
      versions,
    )
    assert.equal(live.manifestHash, a.manifestHash, 'a live change keeps the snapshot')
  })
})
