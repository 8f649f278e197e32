import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { isCriuWorkUnder, listeningUnixInodes, listensOnUnixSocket } from './process.ts'

test('listeningUnixInodes: only sockets of that name with the listening flag', () => {
  // Rows as Linux prints them: the same socket bound (flags 0), then listening (flags 00010000).
  const table = [
    'Num       RefCount Protocol Flags    Type St Inode Path',
    '00000000726d2ffd: 00000002 00000000 00000000 0001 01 5791578 lazy-pages.socket',
    '00000000726d3000: 00000002 00000000 00010000 0001 01 5791600 lazy-pages.socket',
    '00000000726d3001: 00000002 00000000 00010000 0001 01 5791601 other.socket',
    '00000000726d3002: 00000003 00000000 00000000 0001 03 5791602',
  ].join('\n')
  assert.deepEqual([...listeningUnixInodes(table, 'lazy-pages.socket')], ['5791600'])
  assert.deepEqual([...listeningUnixInodes(table, 'missing.socket')], [])
})

test('listensOnUnixSocket: this process listening on a path; not another path, not a dead pid', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-unix-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const path = join(dir, 'probe.socket')
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(path, resolve))
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())))
  assert.equal(await listensOnUnixSocket(process.pid, path), true)
  assert.equal(await listensOnUnixSocket(process.pid, join(dir, 'other.socket')), false)
  assert.equal(await listensOnUnixSocket(2 ** 22 + 1, path), false)
})

test('isCriuWorkUnder: CRIU restores and lazy-pages daemons naming a path under the dir', () => {
  const dir = '/state/instances'
  assert.ok(isCriuWorkUnder(['criu', 'lazy-pages', '--work-dir', '/state/instances/i1/criu'], dir))
  assert.ok(
    isCriuWorkUnder(
      ['criu', 'restore', '--images-dir', '/s/img', '--work-dir', '/state/instances/i1/criu'],
      dir,
    ),
  )
  assert.ok(!isCriuWorkUnder(['criu', 'lazy-pages', '--work-dir', '/other/i1/criu'], dir))
  assert.ok(!isCriuWorkUnder(['criu', 'dump', '--work-dir', '/state/instances/i1/criu'], dir))
  assert.ok(!isCriuWorkUnder(['python3', '/state/instances/i1/app.py'], dir))
})
