import assert from 'node:assert/strict'
import { test } from 'node:test'
import { isCriuWorkUnder } from './process.ts'

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
