import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, rm, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { isInitlessError } from '../../shared/errors.ts'
import { askHolder, lockName, lockStateDir } from './state-lock.ts'

const dirs: string[] = []
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'initless-lock-'))
  dirs.push(dir)
  return dir
}
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

test('a second lock on the same state dir is refused, naming the holder; released, it can be taken again', async () => {
  const dir = await tempDir()
  const lock = await lockStateDir(dir, { hostId: 'host-a' })
  await assert.rejects(lockStateDir(dir, { hostId: 'host-b' }), (err: unknown) => {
    assert.ok(isInitlessError(err, 'ERR_STATE_DIR_IN_USE'))
    assert.match(
      err.message,
      new RegExp(
        `^state dir ${dir} is in use by another executor \\(pid ${process.pid}, host id host-a, since `,
      ),
    )
    assert.deepEqual((err.details.holder as { hostId: string }).hostId, 'host-a')
    return true
  })
  // The same dir through a symlink is the same lock; another dir is another lock.
  const link = join(await tempDir(), 'link')
  await symlink(dir, link)
  await assert.rejects(lockStateDir(link, { hostId: 'host-b' }), /is in use by another executor/)
  const other = await lockStateDir(await tempDir(), { hostId: 'host-b' })
  await other.release()
  await lock.release()
  await lock.release() // idempotent
  const again = await lockStateDir(dir, { hostId: 'host-b' })
  assert.equal(again.name, lockName(dir))
  assert.deepEqual((await askHolder(again.name))?.hostId, 'host-b')
  await again.release()
})

test('the lock of a process killed with SIGKILL is free at once (no stale lock file)', async () => {
  const dir = await tempDir()
  const script = `
    import { lockStateDir } from ${JSON.stringify(join(import.meta.dirname, 'state-lock.ts'))}
    await lockStateDir(${JSON.stringify(dir)}, { hostId: 'child' })
    console.log('locked')
    setInterval(() => {}, 1000)
  `
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('locked') && resolve())
    child.once('exit', (code) => reject(new Error(`child exited (${code}) before it locked`)))
  })
  await assert.rejects(lockStateDir(dir, { hostId: 'parent' }), new RegExp(`pid ${child.pid}, host id child`))
  const exited = new Promise((r) => child.once('exit', r))
  child.kill('SIGKILL')
  await exited
  const lock = await lockStateDir(dir, { hostId: 'parent' })
  await lock.release()
})

test('askHolder: nobody listening, or a holder that says nothing useful, is undefined', async () => {
  assert.equal(await askHolder(lockName('/nonexistent/initless-test-dir')), undefined)
})
