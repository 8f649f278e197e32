import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

const exec = promisify(execFile)
const SCRIPTS = import.meta.dirname

/** scripts/host-tuning.sh run for real in bash, on a switch file and a tmpfiles.d dir of its own. */
describe('scripts/host-tuning.sh', () => {
  let dir = ''
  const switchFile = () => join(dir, 'rcu_expedited')
  const tmpfiles = () => join(dir, 'tmpfiles.d', 'initless.conf')

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'initless-tuning-'))
    await mkdir(join(dir, 'systemd-marker'))
  })
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  async function tune(opts: { systemd: boolean; env?: Record<string, string> }): Promise<string> {
    const { stdout } = await exec(
      'bash',
      ['-c', `set -Eeuo pipefail; . ${SCRIPTS}/daemons.sh; . ${SCRIPTS}/host-tuning.sh; tune_kernel`],
      {
        env: {
          PATH: process.env.PATH,
          INITLESS_RCU_EXPEDITED_FILE: switchFile(),
          INITLESS_TMPFILES_DIR: join(dir, 'tmpfiles.d'),
          INITLESS_SYSTEMD_MARKER: join(dir, opts.systemd ? 'systemd-marker' : 'no-such-dir'),
          ...opts.env,
        },
      },
    )
    return stdout.trim()
  }
  const reset = async (value: string | undefined) => {
    await rm(join(dir, 'tmpfiles.d'), { recursive: true, force: true })
    await rm(switchFile(), { force: true })
    if (value !== undefined) await writeFile(switchFile(), `${value}\n`)
  }

  test('without systemd: sets the switch, says so; a second run finds it set', async () => {
    await reset('0')
    assert.equal(await tune({ systemd: false }), 'RCU grace periods expedited (rcu_expedited 0 -> 1)')
    assert.equal((await readFile(switchFile(), 'utf8')).trim(), '1')
    assert.equal(await tune({ systemd: false }), 'RCU grace periods already expedited')
    await assert.rejects(readFile(tmpfiles()), { code: 'ENOENT' })
  })

  test('with systemd: also writes the tmpfiles.d entry that sets it at every boot, once', async () => {
    await reset('0')
    const said = await tune({ systemd: true })
    assert.match(said, /^RCU grace periods expedited \(rcu_expedited 0 -> 1\), at every boot through /)
    assert.equal(await readFile(tmpfiles(), 'utf8'), `w ${switchFile()} - - - - 1\n`)
    assert.match(await tune({ systemd: true }), /^RCU grace periods already expedited, at every boot/)
    assert.equal(await readFile(tmpfiles(), 'utf8'), `w ${switchFile()} - - - - 1\n`)
  })

  test('INITLESS_KERNEL_TUNING=0 changes nothing and says what the switch is', async () => {
    await reset('0')
    assert.equal(
      await tune({ systemd: true, env: { INITLESS_KERNEL_TUNING: '0' } }),
      'skipped (INITLESS_KERNEL_TUNING=0); rcu_expedited 0',
    )
    assert.equal((await readFile(switchFile(), 'utf8')).trim(), '0')
    await assert.rejects(readFile(tmpfiles()), { code: 'ENOENT' })
  })

  test('a switch that refuses the write (read-only /sys): said, not a failure', async () => {
    // A read-only sysfs attribute stands in for a container's read-only /sys.
    const said = await tune({
      systemd: true,
      env: { INITLESS_RCU_EXPEDITED_FILE: '/sys/kernel/uevent_seqnum' },
    })
    assert.equal(
      said,
      'could not write /sys/kernel/uevent_seqnum (read-only?): RCU grace periods left normal',
    )
  })

  test('a kernel without the switch: nothing to set, not a failure', async () => {
    await reset(undefined)
    assert.match(await tune({ systemd: true }), /has no .*rcu_expedited: nothing to set$/)
    await assert.rejects(readFile(tmpfiles()), { code: 'ENOENT' })
  })
})
