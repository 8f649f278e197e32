import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { gzipSync } from 'node:zlib'
import { isInitlessError } from './errors.ts'
import { parseManifest } from './manifest.ts'
import { readTar, type TarEntry } from './tar.ts'
import { bakedManifest, manifestsDiffer, versionId } from './versions.ts'

async function folder(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'initless-tar-'))
  after(() => rm(dir, { recursive: true, force: true }))
  for (const [path, content] of Object.entries(files)) {
    await mkdir(join(dir, path, '..'), { recursive: true })
    await writeFile(join(dir, path), content)
  }
  return dir
}

const tarOf = (dir: string) => execFileSync('tar', ['-c', '-C', dir, '.'])

/** A one-entry ustar archive, for entries `tar` would not write. */
function rawTar(name: string, type: string, opts: { content?: string; link?: string } = {}): Buffer {
  const header = Buffer.alloc(512)
  header.write(name, 0, 100)
  header.write('0000644\0', 100)
  header.write('0000000\0', 108)
  header.write('0000000\0', 116)
  const content = Buffer.from(opts.content ?? '')
  header.write(`${content.length.toString(8).padStart(11, '0')}\0`, 124)
  header.write('00000000000\0', 136)
  header.write(type, 156)
  if (opts.link) header.write(opts.link, 157, 100)
  header.write('ustar\0', 257)
  header.write('00', 263)
  header.fill(0x20, 148, 156)
  let sum = 0
  for (const b of header) sum += b
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148)
  const data = Buffer.alloc(Math.ceil(content.length / 512) * 512)
  content.copy(data)
  return Buffer.concat([header, data, Buffer.alloc(1024)])
}

const rejects = (buf: Buffer, match: RegExp) =>
  assert.throws(
    () => readTar(buf, 1 << 20),
    (err: unknown) =>
      isInitlessError(err, 'ERR_DEPLOY_CONTEXT_INVALID') && match.test((err as Error).message),
  )

describe('readTar', () => {
  test('reads what tar -c writes, gzipped or not, with long names and links', async () => {
    const long = `${'d'.repeat(60)}/${'f'.repeat(80)}.txt`
    const dir = await folder({ 'function.yaml': 'port: 80\n', 'src/app.js': 'hello', [long]: 'deep' })
    await symlink('src/app.js', join(dir, 'link'))
    const tar = tarOf(dir)
    for (const buf of [tar, gzipSync(tar)]) {
      const entries = readTar(buf, 1 << 20)
      const byPath = new Map(entries.map((e) => [e.path, e]))
      assert.equal(byPath.get('src/app.js')?.content.toString(), 'hello')
      assert.equal(byPath.get(long)?.content.toString(), 'deep')
      assert.equal(byPath.get('src')?.type, 'dir')
      assert.equal(byPath.get('link')?.target, 'src/app.js')
      assert.ok(!byPath.has(''), 'the top folder itself is no entry')
    }
  })

  test('refuses what a build context may not hold, before anything is written', () => {
    rejects(rawTar('../etc/passwd', '0', { content: 'x' }), /leaves the context/)
    rejects(rawTar('/etc/passwd', '0', { content: 'x' }), /absolute path/)
    rejects(rawTar('dev', '3'), /neither a file/)
    rejects(rawTar('out', '2', { link: '../../etc' }), /points out of the context/)
    rejects(rawTar('out', '2', { link: '/etc' }), /points out of the context/)
    rejects(Buffer.from('not a tar at all'), /not a tar archive/)
    const bad = rawTar('a', '0', { content: 'x' })
    bad[0] = 0x62 // the checksum no longer matches
    rejects(bad, /checksum/)
  })

  test('a gzip stream larger than the limit unpacked is refused, not inflated', () => {
    const big = gzipSync(Buffer.concat([rawTar('a', '0', { content: 'x'.repeat(4096) })]))
    assert.throws(
      () => readTar(big, 1024),
      (err: unknown) => isInitlessError(err, 'ERR_DEPLOY_CONTEXT_INVALID'),
    )
  })
})

describe('versionId', () => {
  const m = (text: string) => parseManifest(text, 'f/function.yaml', 'f')
  const file = (path: string, content: string): TarEntry => ({
    path,
    type: 'file',
    mode: 0o644,
    content: Buffer.from(content),
  })

  test('content and baked manifest fields change it; live fields and the file text do not', () => {
    const base = m('port: 80\n')
    const v = versionId([file('app.js', 'a'), file('function.yaml', 'port: 80\n')], base)
    assert.match(v, /^[0-9a-f]{12}$/)
    assert.equal(versionId([file('function.yaml', '# comment\nport: 80\n'), file('app.js', 'a')], base), v)
    assert.notEqual(versionId([file('app.js', 'b')], base), v, 'content')
    assert.notEqual(versionId([file('app.js', 'a')], m('port: 81\n')), v, 'port is baked in')
    const live = m('port: 80\nscaling:\n  maxInstances: 9\ntimeouts:\n  request: 5s\ndescription: x\n')
    assert.equal(versionId([file('app.js', 'a')], live), v, 'live fields')
    assert.ok(manifestsDiffer(base, live))
    assert.deepEqual(bakedManifest(live), bakedManifest(base))
  })
})
