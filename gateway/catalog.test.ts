import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { after, test } from 'node:test'
import { createLogger } from '../shared/logger.ts'
import { loadFunctionCatalog } from './catalog.ts'

test('loads valid manifests, logs and skips invalid ones', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-catalog-'))
  after(() => rm(dir, { recursive: true, force: true }))
  const write = async (name: string, text: string) => {
    await mkdir(join(dir, name))
    await writeFile(join(dir, name, 'function.yaml'), text)
  }
  await write('hello', 'port: 8080\nscaling:\n  concurrency: 4\n')
  await write('broken', 'port: not-a-port\n')
  await write('mismatch', 'name: other\nport: 80\n')
  await mkdir(join(dir, 'no-manifest'))
  await writeFile(join(dir, 'README.md'), 'not a function')

  const lines: string[] = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString())
      cb()
    },
  })
  const catalog = await loadFunctionCatalog({ dir, logger: createLogger({ destination: sink }) })
  assert.deepEqual(
    catalog.list().map((m) => m.name),
    ['hello'],
  )
  assert.equal(catalog.get('hello')?.scaling.concurrency, 4)
  assert.equal(catalog.get('broken'), undefined)
  const skipped = lines.filter((l) => l.includes('invalid manifest skipped'))
  assert.equal(skipped.length, 2)
  assert.ok(skipped.some((l) => l.includes('broken') && l.includes('port')))
})

test('a missing folder is an empty catalog', async () => {
  const catalog = await loadFunctionCatalog({
    dir: join(tmpdir(), 'initless-does-not-exist-' + process.pid),
    logger: createLogger({ level: 'silent' }),
  })
  assert.deepEqual(catalog.list(), [])
})
