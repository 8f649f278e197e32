import assert from 'node:assert/strict'
import { test } from 'node:test'
import { FUNCTION_NAME_RE, manifestHash, parseManifest } from './manifest.ts'
import { createSecretSealer, parseSecretKey } from './secret-crypto.ts'
import {
  checkSecretRef,
  checkSecretValue,
  declaredSecrets,
  parseSecretRef,
  SECRET_MAX_BYTES,
  SECRET_SCOPE_RE,
} from './secrets.ts'

const codeOf = (fn: () => unknown) => {
  try {
    fn()
    return 'ok'
  } catch (err) {
    return (err as { code?: string }).code
  }
}

test('a scope is spelled as a function name', () => {
  assert.equal(SECRET_SCOPE_RE.source, FUNCTION_NAME_RE.source)
})

test('manifest entries name the function scope or a shared one', () => {
  assert.deepEqual(parseSecretRef('fn', 'token'), { scope: 'fn', name: 'token' })
  assert.deepEqual(parseSecretRef('fn', 'shared/db.url'), { scope: 'shared', name: 'db.url' })
  assert.deepEqual(declaredSecrets('fn', undefined), [])
})

for (const [scope, name, want] of [
  ['fn', 'token', 'ok'],
  ['fn', 'TLS_key.pem', 'ok'],
  ['fn', '.hidden', 'ERR_SECRET_NAME_INVALID'],
  ['fn', '..', 'ERR_SECRET_NAME_INVALID'],
  ['fn', 'a/b', 'ERR_SECRET_NAME_INVALID'],
  ['fn', '', 'ERR_SECRET_NAME_INVALID'],
  ['fn', 'x'.repeat(64), 'ERR_SECRET_NAME_INVALID'],
  ['Fn', 'token', 'ERR_SECRET_NAME_INVALID'],
  ['-fn', 'token', 'ERR_SECRET_NAME_INVALID'],
] as const)
  test(`secret ref ${scope}/${name}: ${want}`, () =>
    assert.equal(
      codeOf(() => checkSecretRef(scope, name)),
      want,
    ))

test('values: empty and oversized are refused', () => {
  assert.equal(
    codeOf(() => checkSecretValue(Buffer.alloc(0))),
    'ERR_SECRET_VALUE_INVALID',
  )
  assert.equal(
    codeOf(() => checkSecretValue(Buffer.alloc(SECRET_MAX_BYTES))),
    'ok',
  )
  assert.equal(
    codeOf(() => checkSecretValue(Buffer.alloc(SECRET_MAX_BYTES + 1))),
    'ERR_SECRET_TOO_LARGE',
  )
})

test('manifest: secrets validated, duplicates of one file name refused', () => {
  const m = parseManifest('port: 8080\nsecrets: [token, shared/db-url]\n', 'f.yaml', 'fn')
  assert.deepEqual(m.secrets, ['token', 'shared/db-url'])
  assert.throws(
    () => parseManifest('port: 8080\nsecrets: [token, other/token]\n', 'f.yaml', 'fn'),
    /secrets\.1: a second secret named 'token'/,
  )
  assert.throws(
    () => parseManifest('port: 8080\nsecrets: [../x]\n', 'f.yaml', 'fn'),
    /secrets\.0: expected a secret name/,
  )
  assert.throws(
    () =>
      parseManifest(
        `port: 8080\nsecrets: [${Array.from({ length: 33 }, (_, i) => `s${i}`).join(', ')}]\n`,
        'f.yaml',
        'fn',
      ),
    /secrets/,
  )
})

test('manifest: no secrets (or an empty list) leaves the hash as it was', () => {
  const without = parseManifest('port: 8080\n', 'f.yaml', 'fn')
  const empty = parseManifest('port: 8080\nsecrets: []\n', 'f.yaml', 'fn')
  assert.equal(empty.secrets, undefined)
  assert.equal(manifestHash(empty), manifestHash(without))
  assert.notEqual(
    manifestHash(parseManifest('port: 8080\nsecrets: [a]\n', 'f.yaml', 'fn')),
    manifestHash(without),
  )
})

test('sealing: AES-256-GCM round trip, bound to scope and name, wrong key refused', () => {
  const key = Buffer.alloc(32, 1)
  const sealer = createSecretSealer(key)
  const ref = { scope: 'fn', name: 'token' }
  const value = Buffer.from('the value itself')
  const sealed = sealer.seal(ref, value)
  assert.equal(sealed.alg, 'aes-256-gcm')
  assert.ok(!JSON.stringify(sealed).includes('the value'))
  assert.ok(!JSON.stringify(sealed).includes(value.toString('base64')))
  assert.deepEqual(sealer.open(ref, sealed), value)
  assert.equal(
    codeOf(() => sealer.open({ scope: 'fn', name: 'other' }, sealed)),
    'ERR_SECRET_KEY',
  )
  assert.equal(
    codeOf(() => createSecretSealer(Buffer.alloc(32, 2)).open(ref, sealed)),
    'ERR_SECRET_KEY',
  )
  assert.equal(
    codeOf(() => createSecretSealer(undefined).open(ref, sealed)),
    'ERR_SECRET_KEY',
  )
  // Two seals of one value differ (a fresh IV each).
  assert.notEqual(sealer.seal(ref, value).data, sealed.data)
  const plain = createSecretSealer(undefined)
  assert.deepEqual(plain.open(ref, plain.seal(ref, value)), value)
})

test('key files: 64 hex digits or base64 of 32 bytes', () => {
  const hex = 'ab'.repeat(32)
  assert.deepEqual(parseSecretKey(`${hex}\n`, 'k'), Buffer.from(hex, 'hex'))
  assert.deepEqual(parseSecretKey(Buffer.alloc(32, 9).toString('base64'), 'k'), Buffer.alloc(32, 9))
  for (const bad of ['', 'ab'.repeat(31), 'zz'.repeat(32), Buffer.alloc(16).toString('base64')])
    assert.equal(
      codeOf(() => parseSecretKey(bad, 'k')),
      'ERR_CONFIG_INVALID',
    )
})
