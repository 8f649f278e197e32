import assert from 'node:assert/strict'
import { test } from 'node:test'
import { API_KEY_RE, apiKeyId, generateApiKey, hashApiKey, keyInfo, parseKeyRecord } from './api-keys.ts'

test('a key is ilk_<12 hex id>_<43 base64url>, unique, and names its id', () => {
  const seen = new Set<string>()
  for (let i = 0; i < 200; i++) {
    const { id, key } = generateApiKey()
    assert.match(key, API_KEY_RE)
    assert.equal(key.length, 4 + 12 + 1 + 43)
    assert.equal(apiKeyId(key), id)
    seen.add(key)
  }
  assert.equal(seen.size, 200)
})

test('apiKeyId refuses anything that is not exactly a key', () => {
  const { key } = generateApiKey()
  for (const bad of ['', 'ilk_', key.slice(1), `${key} `, ` ${key}`, key.replace('ilk_', 'ILK_'), `${key}\n`])
    assert.equal(apiKeyId(bad), undefined, JSON.stringify(bad))
})

test('the stored form is SHA-256 of the whole key; records parse back without accepting junk', () => {
  const { id, key } = generateApiKey()
  const hash = hashApiKey(key).toString('hex')
  assert.equal(hash.length, 64)
  const json = JSON.stringify({ id, fn: 'x', createdAt: 5, hash, name: 'ci' })
  const r = parseKeyRecord('fn', json)
  assert.deepEqual(r, { id, fn: 'fn', createdAt: 5, hash, name: 'ci' })
  assert.deepEqual(keyInfo(r), { id, fn: 'fn', createdAt: 5, name: 'ci' })
  for (const bad of [
    '{',
    '{}',
    JSON.stringify({ id: 'zz', createdAt: 1, hash }),
    JSON.stringify({ id, createdAt: 1, hash: 'ab' }),
  ])
    assert.equal(parseKeyRecord('fn', bad), undefined, bad)
})
