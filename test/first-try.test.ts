/**
 * What a user tries first: a new function folder in a runtime none of the samples uses (the Ruby
 * example, built FROM the local base image with Debian's ruby package), copied into the functions
 * dir of a running stack, `initless deploy <fn>` (the CLI as a user runs it), then one plain
 * request, cold: it answers the first time, with the documented manifest only.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { builtEntry } from '../cli/launcher.ts'
import { parseServerTiming } from '../shared/server-timing.ts'
import { http, ROOT, startE2eStack, type E2eStack } from './support/e2e.ts'
import { requireServices } from './support/integration.ts'

const FN = 'hello-ruby'
const exec = promisify(execFile)

describe('first try: a new runtime deployed into a running stack', () => {
  let stack: E2eStack | undefined
  let dir = ''
  after(async () => {
    await stack?.stop()
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  test('copy the folder, `initless deploy`, and a cold request answers', async (t) => {
    if (!requireServices(t)) return
    dir = await mkdtemp(join(tmpdir(), 'initless-first-try-'))
    stack = await startE2eStack({ env: { INITLESS_FUNCTIONS_DIR: dir } })
    const before = await http(stack.port, 'GET', `/fn/${FN}/`)
    assert.equal(before.status, 404, 'not deployed yet')

    // The example's manifest uses nothing the documentation does not describe.
    const manifest = await readFile(join(ROOT, 'examples', FN, 'function.yaml'), 'utf8')
    assert.deepEqual(
      manifest
        .split('\n')
        .filter((l) => l && !l.startsWith('#'))
        .map((l) => l.trim().split(':')[0]),
      ['port', 'readiness', 'expect'],
    )
    await cp(join(ROOT, 'examples', FN), join(dir, FN), { recursive: true })
    const deploy = await exec(process.execPath, [builtEntry('cli'), 'deploy', FN], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 600_000,
      env: {
        ...process.env,
        INITLESS_FUNCTIONS_DIR: dir,
        INITLESS_GATEWAY_URL: stack.url,
        INITLESS_ADMIN_TOKEN: stack.adminToken,
      },
    })
    const said = `${deploy.stdout}${deploy.stderr}`
    t.diagnostic(said.trim())
    assert.match(said, new RegExp(`${FN}\\s+\\S+\\s+deployed \\(was none\\)`))

    const res = await http(stack.port, 'GET', `/fn/${FN}/`, { timeoutMs: 60_000 })
    assert.equal(res.status, 200, res.text)
    const body = JSON.parse(res.text) as { message: string; ruby: string }
    assert.equal(body.message, 'hello from ruby')
    assert.match(body.ruby, /^3\./)
    const timing = parseServerTiming(res.headers['server-timing'])
    assert.ok(timing.has('cold'), `a cold start: ${String(res.headers['server-timing'])}`)
    assert.ok(timing.has('restore'), 'restored from its snapshot, not booted')

    // The user's next try: it is warm now; then they remove it again.
    const again = await http(stack.port, 'GET', `/fn/${FN}/again`)
    assert.equal(again.status, 200, again.text)
    assert.ok(parseServerTiming(again.headers['server-timing']).has('warm'))
    const removed = await exec(process.execPath, [builtEntry('cli'), 'delete', FN], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, INITLESS_GATEWAY_URL: stack.url, INITLESS_ADMIN_TOKEN: stack.adminToken },
    })
    assert.match(`${removed.stdout}${removed.stderr}`, new RegExp(FN))
    assert.equal((await http(stack.port, 'GET', `/fn/${FN}/`)).status, 404)
  })
})
