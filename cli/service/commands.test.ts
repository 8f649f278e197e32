import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

const exec = promisify(execFile)
// The sources through tsx, as every unit test runs: the bin needs a build (dist/).
const CLI = join(import.meta.dirname, '..', 'main.ts')
const TOKEN = 'token-0123456789abcdef'

/**
 * `initless service` as users run it. No systemd runs the host in these tests: INITLESS_SYSTEMD_MARKER
 * points at a directory that does not exist, so nothing reaches a real systemctl.
 */
describe('initless service (the command line)', () => {
  let dir = ''
  let unitDir = ''
  let envFile = ''

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'initless-service-cli-'))
    unitDir = join(dir, 'units')
    envFile = join(dir, 'initless.env')
  })
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  async function cli(args: string[], env: Record<string, string> = {}) {
    return exec(process.execPath, ['--import', 'tsx', CLI, ...args], {
      env: {
        PATH: process.env.PATH,
        INITLESS_SYSTEMD_MARKER: join(dir, 'no-systemd'),
        INITLESS_STATE_DIR: join(dir, 'state'),
        ...env,
      },
    }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({
        code: e.code,
        stdout: e.stdout,
        stderr: e.stderr,
      }),
    )
  }

  const where = () => ['--unit-dir', unitDir, '--settings', envFile]

  test('without systemd: exit 1, what to run instead, nothing written', async () => {
    const res = await cli(['service', 'install', ...where()])
    assert.equal(res.code, 1, res.stderr)
    assert.match(
      res.stderr,
      /^initless: systemd is not running on this host \(no \/run\/systemd\/system\): cannot install/,
    )
    assert.match(res.stderr, /^ {2}npx initless up$/m)
    assert.match(
      res.stderr,
      /^ {2}nohup \S+node .*executor.* >>\/var\/log\/initless\/executor\.log 2>&1 <\/dev\/null &/m,
    )
    assert.deepEqual(await readdir(dir), [])

    const json = await cli(['--json', 'service', 'uninstall'])
    assert.equal(json.code, 1)
    assert.equal(
      (JSON.parse(json.stdout) as { error: { code: string } }).error.code,
      'ERR_SERVICE_NO_SYSTEMD',
    )
  })

  test('--dry-run prints the units and the env file without the token, and writes nothing', async () => {
    const res = await cli(['service', 'install', '--dry-run', ...where()], {
      INITLESS_ADMIN_TOKEN: TOKEN,
      INITLESS_GATEWAY_URL: 'http://127.0.0.1:8080',
    })
    assert.equal(res.code, 0, res.stderr)
    assert.match(res.stdout, /^# dry run: nothing written$/m)
    assert.ok(res.stdout.includes(`# ${join(unitDir, 'initless-executor.service')}\n# Managed by initless`))
    assert.match(res.stdout, /^INITLESS_ADMIN_TOKEN="<redacted>"$/m)
    assert.doesNotMatch(res.stdout + res.stderr, new RegExp(TOKEN))
    assert.match(
      res.stderr,
      /^warning: not written to the env file, no service process reads them: INITLESS_GATEWAY_URL/m,
    )
    assert.deepEqual(await readdir(dir), [])
  })

  const usage: [string, string[], RegExp][] = [
    ['an unknown flag', ['service', 'install', '--bogus'], /unknown option '--bogus'/],
    [
      'a flag without its value',
      ['service', 'install', '--unit-dir'],
      /option '--unit-dir <dir>' argument missing/,
    ],
    ['no subcommand', ['service'], /Usage: initless service/],
    ['an unknown subcommand', ['service', 'start'], /unknown command 'start'/],
  ]
  for (const [what, args, message] of usage)
    test(`bad usage: ${what} exits 2`, async () => {
      const res = await cli(args)
      assert.equal(res.code, 2, res.stderr)
      assert.match(res.stderr, message)
    })

  test('bad settings exit 2, every problem listed', async () => {
    const res = await cli(['service', 'install', '--dry-run', ...where()], {
      INITLESS_SUBNET: 'everywhere',
      INITLESS_GATEWAY_PORT: 'eighty',
    })
    assert.equal(res.code, 2, res.stderr)
    assert.match(res.stderr, /INITLESS_SUBNET: expected an IPv4 CIDR/)
    assert.match(res.stderr, /INITLESS_GATEWAY_PORT: /)
  })
})
