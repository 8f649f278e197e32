import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { isInitlessError } from './errors.ts'
import { loadFunctionDefs } from './functions.ts'
import { parseManifest } from './manifest.ts'
import { readSeccompProfile } from './seccomp.ts'

const MANIFEST = '/srv/functions/hello/function.yaml'

let dir: string
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'initless-seccomp-'))
})
after(() => rm(dir, { recursive: true, force: true }))

describe('security.seccomp in the manifest', () => {
  test('defaults to default', () => {
    assert.deepEqual(parseManifest('port: 8080\n', MANIFEST, 'hello').security, { seccomp: 'default' })
  })

  for (const ok of ['default', 'unconfined', 'seccomp.json', 'profiles/strict.json', 'a-b_c.1.json'])
    test(`accepts ${ok}`, () => {
      const m = parseManifest(`port: 8080\nsecurity:\n  seccomp: ${ok}\n`, MANIFEST, 'hello')
      assert.equal(m.security.seccomp, ok)
    })

  for (const bad of [
    '/etc/x.json',
    '../x.json',
    'a/../../x.json',
    '..',
    'profile.yaml',
    'Default',
    '',
    'a b.json',
  ])
    test(`refuses ${JSON.stringify(bad)}`, () => {
      assert.throws(
        () => parseManifest(`port: 8080\nsecurity:\n  seccomp: ${JSON.stringify(bad)}\n`, MANIFEST, 'hello'),
        (err: unknown) =>
          isInitlessError(err, 'ERR_MANIFEST_INVALID') &&
          /security\.seccomp: expected 'default', 'unconfined' or a \.json profile file/.test(err.message),
      )
    })

  test('unknown fields under security are refused', () => {
    assert.throws(
      () => parseManifest('port: 8080\nsecurity:\n  apparmor: x\n', MANIFEST, 'hello'),
      /security: unknown field\(s\) 'apparmor'/,
    )
  })
})

describe('readSeccompProfile', () => {
  const read = (setting: string) => readSeccompProfile(dir, setting, MANIFEST)
  const refused = (re: RegExp) => (err: unknown) => {
    assert.ok(isInitlessError(err, 'ERR_MANIFEST_INVALID'), String(err))
    assert.match(
      err.message,
      /^\/srv\/functions\/hello\/function\.yaml: invalid manifest\n {2}security\.seccomp: /,
    )
    assert.match(err.message, re)
    return true
  }

  test('a valid profile is returned as parsed', async () => {
    const profile = {
      defaultAction: 'SCMP_ACT_ERRNO',
      defaultErrnoRet: 1,
      syscalls: [
        { names: ['read', 'write'], action: 'SCMP_ACT_ALLOW', comment: 'io' },
        { names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 2, op: 'SCMP_CMP_EQ' }] },
      ],
    }
    await writeFile(join(dir, 'ok.json'), JSON.stringify(profile))
    assert.deepEqual(await read('ok.json'), profile)
  })

  test('a missing file', async () => {
    await assert.rejects(read('missing.json'), refused(/profile file missing\.json not found/))
  })

  test('not JSON', async () => {
    await writeFile(join(dir, 'bad.json'), '{ defaultAction: ')
    await assert.rejects(read('bad.json'), refused(/profile file bad\.json is not JSON/))
  })

  test("Docker's conditional rules are named as unsupported", async () => {
    await writeFile(
      join(dir, 'docker.json'),
      JSON.stringify({
        defaultAction: 'SCMP_ACT_ERRNO',
        syscalls: [{ names: ['ptrace'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '4.8' } }],
      }),
    )
    await assert.rejects(
      read('docker.json'),
      refused(/syscalls\.0: unknown field\(s\) 'includes' \(Docker's conditional rules/),
    )
  })

  test('a wrong action, an argument index past 5, a bad name', async () => {
    await writeFile(
      join(dir, 'wrong.json'),
      JSON.stringify({
        defaultAction: 'SCMP_ACT_MAYBE',
        syscalls: [
          {
            names: ['Bad Name'],
            action: 'SCMP_ACT_ALLOW',
            args: [{ index: 6, value: 0, op: 'SCMP_CMP_EQ' }],
          },
        ],
      }),
    )
    await assert.rejects(
      read('wrong.json'),
      refused(
        /defaultAction: Invalid enum value.*syscalls\.0\.names\.0: expected a system call name.*syscalls\.0\.args\.0\.index/,
      ),
    )
  })

  test('a link out of the function folder is refused', async () => {
    const outside = await mkdtemp(join(tmpdir(), 'initless-outside-'))
    after(() => rm(outside, { recursive: true, force: true }))
    await writeFile(
      join(outside, 'p.json'),
      JSON.stringify({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [] }),
    )
    await symlink(join(outside, 'p.json'), join(dir, 'escape.json'))
    await assert.rejects(read('escape.json'), refused(/leads outside the function's folder/))
  })

  test('loadFunctionDefs reports a function with a bad profile as a problem, the others load', async () => {
    const fns = await mkdtemp(join(tmpdir(), 'initless-fns-'))
    after(() => rm(fns, { recursive: true, force: true }))
    await mkdir(join(fns, 'good'))
    await writeFile(join(fns, 'good', 'function.yaml'), 'port: 8080\n')
    await mkdir(join(fns, 'bad'))
    await writeFile(join(fns, 'bad', 'function.yaml'), 'port: 8080\nsecurity:\n  seccomp: nope.json\n')
    const set = await loadFunctionDefs(fns)
    assert.deepEqual(
      set.functions.map((f) => f.name),
      ['good'],
    )
    assert.equal(set.problems.length, 1)
    assert.match(set.problems[0]!.error.message, /security\.seccomp: profile file nope\.json not found/)
  })
})
