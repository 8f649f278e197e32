import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { fakeRunner } from '../../executor/adapters/exec-fake.ts'
import { InitlessError, isInitlessError } from '../../shared/errors.ts'
import { createSystemctl } from './systemctl.ts'

test('systemctl: the command lines it runs', async () => {
  const { run, calls } = fakeRunner()
  const systemctl = createSystemctl({ run })
  await systemctl.reload()
  await systemctl.enable(['a.service', 'b.service'], { now: false })
  await systemctl.enable(['a.service'], { now: true })
  await systemctl.disable(['b.service', 'a.service'])
  assert.deepEqual(
    calls.map((c) => [c.cmd, ...c.args].join(' ')),
    [
      'systemctl daemon-reload',
      'systemctl enable -- a.service b.service',
      'systemctl enable --now -- a.service',
      'systemctl disable --now -- b.service a.service',
    ],
  )
  // Starting units waits for them: longer than the runner's default minute.
  assert.ok(calls.every((c) => (c.options?.timeoutMs ?? 0) >= 120_000))
})

test('systemctl: a failure keeps systemctl’s message', async () => {
  const failed = new InitlessError(
    'ERR_COMMAND_FAILED',
    'systemctl enable -- a.service: exit 1\nUnit a.service not found.',
  )
  const systemctl = createSystemctl({ run: fakeRunner(() => failed).run })
  await assert.rejects(systemctl.enable(['a.service'], { now: false }), (err) => {
    assert.ok(isInitlessError(err, 'ERR_COMMAND_FAILED'))
    assert.match(err.message, /Unit a\.service not found/)
    return true
  })
})

test('systemctl: systemd runs the host when its marker directory exists', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-systemd-'))
  try {
    assert.equal(await createSystemctl({ marker: dir }).isBooted(), true)
    assert.equal(await createSystemctl({ marker: join(dir, 'system') }).isBooted(), false)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})
