/**
 * Reading an uploaded build context: a tar archive (optionally gzipped), as `tar -c -C dir .`
 * writes it (ustar, GNU long names, pax path records). Only what a build context may hold is
 * accepted: regular files, directories and symbolic links, at relative paths that stay inside the
 * context. Anything else is refused with ERR_DEPLOY_CONTEXT_INVALID, before a byte is written.
 */
import { gunzipSync } from 'node:zlib'
import { InitlessError } from './errors.ts'

export interface TarEntry {
  /** Normalised relative path, without `./` and trailing `/` ('' never appears). */
  readonly path: string
  readonly type: 'file' | 'dir' | 'symlink'
  readonly mode: number
  /** File content (empty for directories and links). */
  readonly content: Buffer
  /** Link target (symlinks). */
  readonly target?: string
}

const BLOCK = 512

function invalid(message: string): InitlessError {
  return new InitlessError('ERR_DEPLOY_CONTEXT_INVALID', `build context: ${message}`)
}

function text(buf: Buffer, start: number, length: number): string {
  const field = buf.subarray(start, start + length)
  const end = field.indexOf(0)
  return field.subarray(0, end < 0 ? field.length : end).toString('utf8')
}

function octal(buf: Buffer, start: number, length: number): number {
  const s = text(buf, start, length).trim()
  if (!/^[0-7]*$/.test(s)) throw invalid(`bad number field '${s}' in a tar header`)
  return s ? parseInt(s, 8) : 0
}

/** A relative path inside the context, or a refusal. */
export function normaliseEntryPath(raw: string): string {
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.')
  if (raw.startsWith('/')) throw invalid(`absolute path '${raw}'`)
  if (parts.some((p) => p === '..')) throw invalid(`path '${raw}' leaves the context`)
  return parts.join('/')
}

/** Whether a relative path, `..` resolved, stays inside its root. */
function isInside(rel: string): boolean {
  let depth = 0
  for (const p of rel.split('/')) {
    if (p === '..') depth--
    else if (p !== '' && p !== '.') depth++
    if (depth < 0) return false
  }
  return true
}

function paxPath(data: Buffer): string | undefined {
  let i = 0
  let path: string | undefined
  while (i < data.length) {
    const space = data.indexOf(0x20, i)
    if (space < 0) break
    const len = Number(data.subarray(i, space).toString('ascii'))
    if (!Number.isInteger(len) || len <= 0) break
    const record = data.subarray(space + 1, i + len - 1).toString('utf8')
    const eq = record.indexOf('=')
    if (record.slice(0, eq) === 'path') path = record.slice(eq + 1)
    i += len
  }
  return path
}

/**
 * Parse a build context. `maxBytes` bounds the unpacked size too (a gzip bomb is refused, not
 * inflated).
 */
export function readTar(input: Buffer, maxBytes: number): TarEntry[] {
  let buf = input
  if (buf.length >= 2 && buf[0] === 0x1f && buf[1] === 0x8b) {
    try {
      buf = gunzipSync(buf, { maxOutputLength: maxBytes })
    } catch (err) {
      throw invalid(`not a readable gzip stream, or larger than ${maxBytes} bytes unpacked (${String(err)})`)
    }
  }
  if (buf.length % BLOCK !== 0 || buf.length < BLOCK)
    throw invalid('not a tar archive (its size is not a multiple of 512 bytes)')
  const entries: TarEntry[] = []
  let offset = 0
  let longName: string | undefined
  while (offset + BLOCK <= buf.length) {
    const header = buf.subarray(offset, offset + BLOCK)
    if (header.every((b) => b === 0)) break
    const sum = octal(header, 148, 8)
    let actual = 0
    for (let i = 0; i < BLOCK; i++) actual += i >= 148 && i < 156 ? 0x20 : (header[i] ?? 0)
    if (sum !== actual) throw invalid(`bad tar header checksum at byte ${offset}`)
    const size = octal(header, 124, 12)
    const type = String.fromCharCode(header[156] ?? 0)
    const dataStart = offset + BLOCK
    if (dataStart + size > buf.length) throw invalid('archive cut off')
    const data = buf.subarray(dataStart, dataStart + size)
    offset = dataStart + Math.ceil(size / BLOCK) * BLOCK
    if (type === 'L') {
      longName = text(data, 0, data.length)
      continue
    }
    if (type === 'x') {
      longName = paxPath(data) ?? longName
      continue
    }
    if (type === 'g') continue
    const prefix = text(header, 345, 155)
    const name = longName ?? (prefix ? `${prefix}/${text(header, 0, 100)}` : text(header, 0, 100))
    longName = undefined
    const path = normaliseEntryPath(name)
    const mode = octal(header, 100, 8) & 0o7777
    if (type === '0' || type === '\0' || type === '7') {
      if (!path) throw invalid('a file without a name')
      entries.push({ path, type: 'file', mode, content: Buffer.from(data) })
    } else if (type === '5') {
      if (path) entries.push({ path, type: 'dir', mode, content: Buffer.alloc(0) })
    } else if (type === '2') {
      const target = text(header, 157, 100)
      // A link out of the context would let a later entry write outside the folder it is unpacked to.
      const dir = path.split('/').slice(0, -1).join('/')
      if (target.startsWith('/') || !isInside(dir ? `${dir}/${target}` : target))
        throw invalid(`symbolic link '${path}' points out of the context ('${target}')`)
      entries.push({ path, type: 'symlink', mode, content: Buffer.alloc(0), target })
    } else {
      throw invalid(`'${name}' is neither a file, a directory nor a symbolic link (tar type '${type}')`)
    }
  }
  return entries
}
