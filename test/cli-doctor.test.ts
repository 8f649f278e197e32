import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'
import { readCgroupLayout } from '../executor/adapters/cgroups.ts'
import { loadExecutorConfig } from '../executor/config.ts'
import { requireServices } from './support/integration.ts'

const exec = promisify(execFile)
const CLI = join(import.meta.dirname, '..', 'bin', 'initless.mjs')
const config = loadExecutorConfig(process.env)

interface Check {
  name: string
  ok: boolean
  detail: string
  fix?: string
}

async function doctor(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; checks: Check[] }> {
  try {
    const { stdout } = await exec(process.execPath, [CLI, '--json', 'doctor', ...args], {
      env: { ...process.env, ...env },
      timeout: 180_000,
    })
    return { code: 0, checks: JSON.parse(stdout) as Check[] }
  } catch (err) {
    const e = err as { code: number; stdout: string }
    return { code: e.code, checks: JSON.parse(e.stdout) as Check[] }
  }
}

/**
 * Debian bookworm's own CRIU 3.17, unpacked (not installed) from the archive with the libraries it
 * links that the host lacks (provisioning installs none of them: initless's CRIU is built without
 * nftables, and 3.17 links libnftables). Returns a wrapper that runs it with those libraries.
 */
async function debianCriu317(): Promise<string> {
  const dir = join(config.INITLESS_STATE_DIR, 'test-cache', 'criu-3.17')
  const wrapper = join(dir, 'criu')
  if (existsSync(wrapper)) return wrapper
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true })
  // -o APT::Sandbox::User=root: `_apt` cannot write into the state dir (0700).
  const download = (pkg: string) =>
    exec('apt-get', ['download', '-o', 'APT::Sandbox::User=root', pkg], { cwd: dir, timeout: 120_000 })
  await download('criu=3.17.1*').catch(() => download('criu'))
  const { stdout } = await exec('apt-cache', [
    'depends',
    '--recurse',
    ...['recommends', 'suggests', 'conflicts', 'breaks', 'replaces', 'enhances'].map((d) => `--no-${d}`),
    'criu',
  ])
  const libraries = [...new Set(stdout.split('\n').filter((l) => /^lib[\w.+-]+$/.test(l)))]
  for (const pkg of libraries) {
    const installed = await exec('dpkg-query', ['-W', '-f=${Status}', pkg]).then(
      (r) => r.stdout.endsWith('ok installed'),
      () => false,
    )
    if (!installed) await download(pkg)
  }
  const debs = (await readdir(dir)).filter((f) => f.endsWith('.deb'))
  assert.ok(
    debs.some((f) => f.startsWith('criu_')),
    'apt-get download criu produced no .deb',
  )
  for (const deb of debs) await exec('dpkg', ['-x', join(dir, deb), join(dir, 'root')])
  const libs = ['usr/lib/x86_64-linux-gnu', 'lib/x86_64-linux-gnu'].map((l) => join(dir, 'root', l))
  await writeFile(
    wrapper,
    `#!/bin/sh\nLD_LIBRARY_PATH=${libs.join(':')} exec ${join(dir, 'root', 'usr', 'sbin', 'criu')} "$@"\n`,
    { mode: 0o755 },
  )
  return wrapper
}

test('doctor: a healthy host passes every check, the restore probe included', async (t) => {
  if (!requireServices(t)) return
  const { code, checks } = await doctor([])
  assert.deepEqual(
    checks.filter((c) => !c.ok),
    [],
  )
  assert.equal(code, 0)
  const names = checks.map((c) => c.name)
  for (const n of [
    'node',
    'docker engine',
    'docker experimental',
    'runc',
    'criu version',
    'criu check',
    'lazy pages',
    'sandbox helper',
    'restore path',
    'lazy restores',
    'redis',
    'queue redis',
    'image registry',
    'kernel features',
    'disk',
    'restore probe',
  ]) {
    assert.ok(names.includes(n), `doctor reports ${n}`)
  }
  assert.match(checks.find((c) => c.name === 'restore probe')!.detail, /lazy restore answers/)
  // Restores are direct here: on v1 by cgroup writes, on v2 through the helper's device filter.
  const { v2 } = await readCgroupLayout()
  assert.equal(
    checks.find((c) => c.name === 'restore path')?.detail,
    v2 ? 'direct (cgroup v2, eBPF device filter)' : 'direct (cgroup v1)',
  )
})

test('doctor: a stopped Docker engine, a stopped Redis and an old CRIU are each named with a fix', async (t) => {
  if (!requireServices(t)) return
  const oldCriu = await debianCriu317()
  const { code, checks } = await doctor(['--quick'], {
    // Nothing listens on either address: exactly what a stopped dockerd and a stopped Redis look like.
    INITLESS_DOCKER_HOST: 'unix:///run/initless-test-no-docker.sock',
    INITLESS_REDIS_URL: 'redis://127.0.0.1:1',
    INITLESS_CRIU: oldCriu,
  })
  assert.equal(code, 1)
  const byName = new Map(checks.map((c) => [c.name, c]))
  const docker = byName.get('docker engine')!
  assert.equal(docker.ok, false)
  assert.match(docker.detail, /does not answer/)
  assert.match(docker.fix!, /provision\.sh/)
  const redis = byName.get('redis')!
  assert.equal(redis.ok, false)
  assert.match(redis.detail, /ECONNREFUSED/)
  assert.match(redis.fix!, /Redis >= 6\.2/)
  const criu = byName.get('criu version')!
  assert.equal(criu.ok, false)
  assert.match(criu.detail, /CRIU 3\.17\.1 .* older than 4\.2/)
  assert.match(criu.fix!, /4\.2\.1/)
  // 3.17's own check fails on this project's 6.18 hosts (`Unexpected rt vDSO area bounds`) and
  // passes on Debian 12's 6.1: doctor reports what the binary itself says.
  const ownCheck = await exec(oldCriu, ['check']).then(
    () => true,
    () => false,
  )
  assert.equal(byName.get('criu check')!.ok, ownCheck)
  // What is healthy stays healthy.
  assert.equal(byName.get('runc')!.ok, true)
  assert.equal(byName.get('node')!.ok, true)
})

test('doctor: invalid configuration exits 2 and names the key', async () => {
  const err = (await exec(process.execPath, [CLI, 'doctor', '--quick'], {
    env: { ...process.env, INITLESS_SUBNET: 'not-a-cidr' },
  }).catch((e: unknown) => e)) as { code: number; stderr: string }
  assert.equal(err.code, 2)
  assert.match(err.stderr, /INITLESS_SUBNET/)
})
