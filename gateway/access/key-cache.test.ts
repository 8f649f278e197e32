import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createFakeApiKeyStore } from '../../shared/api-keys-fake.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { createKeyCache } from './key-cache.ts'

const settle = () => new Promise((r) => setTimeout(r, 5))

test('follows creations and revocations by their events', async () => {
  const store = createFakeApiKeyStore()
  const early = await store.create('fn')
  const cache = createKeyCache({ store, logger: createSilentLogger(), refreshIntervalMs: 60_000 })
  await cache.start()
  try {
    assert.equal(cache.verify('fn', early.key), early.record.id, 'read at start')
    const later = await store.create('fn')
    await settle()
    assert.equal(cache.verify('fn', later.key), later.record.id, 'learnt from the event')
    assert.equal(cache.verify('other', later.key), undefined, 'a key is bound to its function')
    await store.revoke('fn', early.record.id)
    await settle()
    assert.equal(cache.verify('fn', early.key), undefined, 'revoked')
    assert.equal(cache.verify('fn', later.key), later.record.id)
  } finally {
    await cache.close()
  }
})

test('a missed event is repaired by the periodic re-read', async () => {
  const store = createFakeApiKeyStore()
  const { key, record } = await store.create('fn')
  const cache = createKeyCache({ store, logger: createSilentLogger(), refreshIntervalMs: 200 })
  await cache.start()
  try {
    store.setPublishing(false)
    await store.revoke('fn', record.id)
    assert.equal(cache.verify('fn', key), record.id, 'no event: still cached')
    await new Promise((r) => setTimeout(r, 450))
    assert.equal(cache.verify('fn', key), undefined, 'the re-read dropped it')
  } finally {
    await cache.close()
  }
})

test('a store out of reach keeps the last keys read; garbage never verifies', async () => {
  const store = createFakeApiKeyStore()
  const { key, record } = await store.create('fn')
  const cache = createKeyCache({ store, logger: createSilentLogger(), refreshIntervalMs: 60_000 })
  await cache.start()
  try {
    store.setAvailable(false)
    await cache.refreshOne('fn')
    assert.equal(cache.verify('fn', key), record.id)
    for (const bad of ['', key.slice(0, -1), `${key}x`, key.toUpperCase(), `Bearer ${key}`])
      assert.equal(cache.verify('fn', bad), undefined, bad)
  } finally {
    await cache.close()
  }
})
