/**
 * Secrets on the real stack: values set through the CLI and the admin API, sealed in Redis,
 * mounted at /run/secrets of restored instances (lazy restores of a fixture that reads them per
 * request), rotated without a re-bake, and found in no snapshot, image or log.
 */
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { deployFunction } from '../cli/deploy-client.ts'
import { newSecretKeyText } from '../shared/secret-crypto.ts'
import { parseServerTiming, ROOT, startE2eStack, type E2eStack } from './support/e2e.ts'
import { isCI, requireServices } from './support/integration.ts'

const FIXTURES = join(import.meta.dirname, 'fixtures', 'functions')
const CLI = join(ROOT, 'dist', 'cli', 'main.js')
const FN = 'secret-reader'
const tag = randomBytes(3).toString('hex')
const r = 1 + ((randomBytes(1)[0] ?? 0) % 250)
const BRIDGE = `ilsc${tag}`
const SUBNET = `10.236.${r}.0/24`
const V1 = `v1-${randomBytes(12).toString('hex')}`
const V2 = `v2-${randomBytes(12).toString('hex')}`
const DB = `postgres://u:${randomBytes(12).toString('hex')}@db/x`

/** Every file under `dir` (recursively) whose bytes contain one of `needles`. */
async function filesContaining(dir: string, needles: readonly string[]): Promise<string[]> {
  const found: string[] = []
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = join(d, e.name)
      if (e.isDirectory()) await walk(p)
      else if (e.isFile()) {
        const data = await readFile(p).catch(() => Buffer.alloc(0))
        if (needles.some((n) => data.includes(n))) found.push(p)
      }
    }
  }
  await walk(dir)
  return found
}

/**
 * A command's exit status and output. Not spawnSync: a blocked event loop misses the gateway
 * closing idle keep-alive connections, and the next request through the suite's agent would go
 * out on a closed one.
 */
function run(
  cmd: string,
  args: string[],
  input?: string | Buffer,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ status: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, timeout: 120_000 })
    const out: Buffer[] = []
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => out.push(d))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('error', reject)
    child.on('close', (status) => resolve({ status, stdout: Buffer.concat(out), stderr }))
    child.stdin.on('error', () => undefined) // the command may exit before reading it all
    child.stdin.end(input ?? '')
  })
}

describe('secrets: set, mounted at restore, rotated without a re-bake, leaked nowhere', () => {
  const stateDir = `/var/lib/initless-test/secrets-${tag}`
  let functionsDir = ''
  let keyDir = ''
  let stack: E2eStack | undefined
  const cli = async (args: string[], input?: string | Buffer) => {
    const res = await run(process.execPath, [CLI, ...args], input, { ...process.env, ...stack!.env })
    return { status: res.status, stdout: res.stdout.toString(), stderr: res.stderr }
  }
  const get = async (path: string) => stack!.request('GET', `/fn/${FN}${path}`)
  const putSecret = (path: string, body: string) =>
    stack!.request('PUT', `/admin/secrets/${path}`, {
      headers: { authorization: `Bearer ${stack!.adminToken}` },
      body,
    })

  before(async () => {
    if (process.getuid?.() !== 0 && !isCI) return
    functionsDir = await mkdtemp(join(tmpdir(), 'initless-secrets-'))
    await cp(join(FIXTURES, FN), join(functionsDir, FN), { recursive: true })
    keyDir = await mkdtemp(join(tmpdir(), 'initless-secrets-key-'))
    await writeFile(join(keyDir, 'key'), newSecretKeyText(), { mode: 0o600 })
  })
  after(async () => {
    await stack?.stop()
    spawnSync('ip', ['link', 'del', BRIDGE], { stdio: 'ignore' })
    await rm(stateDir, { recursive: true, force: true })
    if (functionsDir) await rm(functionsDir, { recursive: true, force: true })
    if (keyDir) await rm(keyDir, { recursive: true, force: true })
  })

  test('a declared secret without a value, then set, read, rotated, removed', async (t) => {
    if (!requireServices(t) || !functionsDir) return
    stack = await startE2eStack({
      env: {
        INITLESS_FUNCTIONS_DIR: functionsDir,
        INITLESS_STATE_DIR: stateDir,
        INITLESS_BRIDGE: BRIDGE,
        INITLESS_SUBNET: SUBNET,
        INITLESS_SECRETS_KEY_FILE: join(keyDir, 'key'),
      },
      prepareTimeoutMs: 300_000,
    })

    // A deploy names the declared secrets that have no value.
    const deploy = await deployFunction(
      { url: stack.url, token: stack.adminToken },
      { name: FN, dir: join(functionsDir, FN) },
    )
    assert.deepEqual(deploy.missingSecrets, [`${FN}/token`, 'shared-test/db-url'])

    // Without values no instance starts: 503 ERR_SECRET_MISSING, not a boot, not a re-bake.
    const missing = await get('/secret/token')
    assert.equal(missing.status, 503, missing.text)
    assert.match(String(missing.headers['content-type']), /application\/problem\+json/)
    assert.equal((JSON.parse(missing.text) as { code: string }).code, 'ERR_SECRET_MISSING')
    assert.match(missing.text, /secret-reader\/token/)

    // Bad input: exit 2, a message, nothing stored.
    const badCases: [string, string[], string | Buffer, RegExp][] = [
      ['unknown function', ['secrets', 'set', 'no-such-fn', 'token'], 'x', /no function named no-such-fn/],
      ['bad name', ['secrets', 'set', FN, '.token'], 'x', /not a secret name/],
      ['bad scope', ['secrets', 'set', 'Bad_Scope', 'token'], 'x', /not a secret scope/],
      ['empty value', ['secrets', 'set', FN, 'token'], '', /must not be empty/],
      [
        'value too large',
        ['secrets', 'set', FN, 'token'],
        Buffer.alloc(40_000, 97),
        /limited to 32768 bytes/,
      ],
      ['no such file', ['secrets', 'set', FN, 'token', '--from-file', '/nonexistent/x'], '', /cannot read/],
      ['removing what is not there', ['secrets', 'rm', FN, 'nope'], '', /no secret secret-reader\/nope/],
    ]
    for (const [what, args, input, message] of badCases) {
      const res = await cli(args, input)
      assert.equal(res.status, 2, `${what}: exit ${res.status}\n${res.stdout}\n${res.stderr}`)
      assert.match(res.stderr, message, what)
    }
    const listed0 = await cli(['--json', 'secrets', 'list'])
    assert.equal(listed0.status, 0, listed0.stderr)
    assert.deepEqual((JSON.parse(listed0.stdout) as { secrets: unknown[] }).secrets, [])

    // Set: one from stdin through the CLI, one from a file, the shared one through the API.
    const set1 = await cli(['secrets', 'set', FN, 'token'], V1)
    assert.equal(set1.status, 0, set1.stderr)
    assert.match(set1.stdout, /secret-reader\/token created/)
    assert.ok(!set1.stdout.includes('unencrypted'), set1.stdout)
    assert.equal((await putSecret('shared-test/db-url', DB)).status, 201)
    const listed = await cli(['secrets', 'list'])
    assert.equal(listed.status, 0, listed.stderr)
    assert.match(listed.stdout, /secret-reader\s+token/)
    assert.match(listed.stdout, /shared-test\s+db-url/)
    assert.ok(!listed.stdout.includes(V1) && !listed.stdout.includes(DB))

    // Restored (lazily) with the values mounted; read per request by the function's own user.
    const first = await get('/secret/token')
    assert.equal(first.status, 200, first.text)
    assert.equal(first.text, V1)
    const timing = parseServerTiming(String(first.headers['server-timing']))
    assert.ok(timing.has('cold'), 'the first request restored an instance')
    t.diagnostic(`cold start with secrets: ${String(first.headers['server-timing'])}`)
    assert.ok(timing.get('secrets') !== undefined, 'Server-Timing reports the secrets phase')
    assert.equal((await get('/secret/db-url')).text, DB)
    const st = JSON.parse((await get('/stat/token')).text) as Record<string, number>
    // Root here: CRIU on this host lacks CAP_SYS_RESOURCE and cannot dump another uid's process
    // (its rlimits); the owner is the image's USER either way (unit-tested with 1000:1001).
    assert.deepEqual(st, { mode: 0o400, uid: 0, gid: 0, me: 0, write: 30 /* EROFS */ })
    const atStart = JSON.parse((await get('/at-start')).text) as { atStart: unknown; now: unknown }
    assert.deepEqual(atStart, { atStart: [], now: ['db-url', 'token'] }, 'the bake saw an empty /run/secrets')

    // Rotate while the instance runs: it keeps its file; the next restored instance reads the new
    // value, from the same snapshot (no bake).
    const snapshotsDir = join(stateDir, 'snapshots', FN)
    const snapshotsBefore = (await readdir(snapshotsDir)).sort()
    const bakes = () =>
      stack!.executor.records().filter((l) => /^snapshot .* stored/.test(String(l.msg))).length
    const bakesBefore = bakes()
    const file = join(keyDir, 'v2')
    await writeFile(file, V2, { mode: 0o600 })
    const set2 = await cli(['secrets', 'set', FN, 'token', '--from-file', file])
    assert.equal(set2.status, 0, set2.stderr)
    assert.match(set2.stdout, /updated/)
    assert.equal((await get('/secret/token')).text, V1, 'a running instance keeps the value it started with')
    const coldTimings: string[] = []
    for (let i = 0; i < 5; i++) {
      await stack.scaleToZero(FN)
      const next = await get('/secret/token')
      assert.equal(next.status, 200, next.text)
      assert.equal(next.text, V2)
      assert.ok(parseServerTiming(String(next.headers['server-timing'])).has('cold'))
      coldTimings.push(String(next.headers['server-timing']))
    }
    t.diagnostic(`cold starts after the rotation (busy machine):\n${coldTimings.join('\n')}`)
    assert.equal(bakes(), bakesBefore, 'no bake after the rotation')
    assert.deepEqual((await readdir(snapshotsDir)).sort(), snapshotsBefore, 'the same snapshot')

    // No value in the snapshot, the unpacked image, the image's history and layers, or any log.
    const needles = [V1, V2, DB]
    assert.deepEqual(await filesContaining(join(stateDir, 'snapshots'), needles), [])
    assert.deepEqual(await filesContaining(join(stateDir, 'images'), needles), [])
    const versions = await stack.admin<{ versions: { image: { tag: string } | null }[] }>(
      'GET',
      `/functions/${FN}/versions`,
    )
    const image = versions.body.versions[0]?.image?.tag
    assert.ok(image, 'the version has an image')
    const history = await run('docker', ['history', '--no-trunc', image])
    assert.equal(history.status, 0, history.stderr)
    const saved = await run('docker', ['save', image])
    assert.equal(saved.status, 0, saved.stderr)
    for (const n of needles) {
      assert.ok(!history.stdout.includes(n), 'docker history')
      assert.ok(!saved.stdout.includes(n), 'docker save')
    }
    const logs = stack.executor.output() + stack.gateway.output()
    for (const n of needles) assert.ok(!logs.includes(n), 'executor and gateway output')
    assert.match(logs, /secret set/, 'the logs do say a secret was set')
    // Nor in Redis as stored (sealed under the key file).
    const redisDump = await run('redis-cli', [
      '--no-raw',
      'hgetall',
      `${stack.env.INITLESS_KEY_PREFIX}:secrets:${FN}`,
    ])
    assert.equal(redisDump.status, 0, redisDump.stderr)
    assert.match(redisDump.stdout.toString(), /aes-256-gcm/)
    for (const n of needles) assert.ok(!redisDump.stdout.includes(n), 'redis')

    // Removed: the next instance is refused again.
    const rmShared = await cli(['secrets', 'rm', 'shared-test', 'db-url'])
    assert.equal(rmShared.status, 0, rmShared.stderr)
    await stack.scaleToZero(FN)
    const gone = await get('/secret/token')
    assert.equal(gone.status, 503, gone.text)
    assert.equal((JSON.parse(gone.text) as { code: string }).code, 'ERR_SECRET_MISSING')
    assert.equal(bakes(), bakesBefore, 'still no bake')

    // Stopping leaves no secrets tmpfs behind.
    await stack.stop()
    const mounts = await readFile('/proc/self/mountinfo', 'utf8')
    assert.ok(!mounts.includes(join(stateDir, 'secrets')), 'the secrets tmpfs is unmounted')
  })
})
