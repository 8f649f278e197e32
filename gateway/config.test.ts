import assert from 'node:assert/strict'
import { test } from 'node:test'
import { isInitlessError } from '../shared/errors.ts'
import { loadGatewayConfig } from './config.ts'

test('defaults, with units resolved', () => {
  const c = loadGatewayConfig({})
  assert.equal(c.INITLESS_GATEWAY_HOST, '127.0.0.1')
  assert.equal(c.INITLESS_GATEWAY_PORT, 8080)
  assert.equal(c.INITLESS_MAX_BODY, 10 * 1024 * 1024)
  assert.equal(c.INITLESS_ADMIN_TOKEN, undefined)
  assert.equal(c.INITLESS_TRUST_PROXY, false)
  assert.equal(c.INITLESS_SHUTDOWN_TIMEOUT, 10_000)
  assert.equal(c.INITLESS_REDIS_URL, 'redis://127.0.0.1:6379')
  assert.ok(Object.isFrozen(c))
})

test('values from env; empty strings fall back to defaults', () => {
  const c = loadGatewayConfig({
    INITLESS_GATEWAY_PORT: '9090',
    INITLESS_MAX_BODY: '512Ki',
    INITLESS_ADMIN_TOKEN: 'a-long-enough-admin-token',
    INITLESS_TRUST_PROXY: 'yes',
    INITLESS_SHUTDOWN_TIMEOUT: '2s',
    INITLESS_GATEWAY_HOST: '',
  })
  assert.equal(c.INITLESS_GATEWAY_PORT, 9090)
  assert.equal(c.INITLESS_MAX_BODY, 512 * 1024)
  assert.equal(c.INITLESS_ADMIN_TOKEN, 'a-long-enough-admin-token')
  assert.equal(c.INITLESS_TRUST_PROXY, true)
  assert.equal(c.INITLESS_SHUTDOWN_TIMEOUT, 2000)
  assert.equal(c.INITLESS_GATEWAY_HOST, '127.0.0.1')
})

test('every problem is listed at once', () => {
  assert.throws(
    () =>
      loadGatewayConfig({
        INITLESS_GATEWAY_PORT: '70000',
        INITLESS_MAX_BODY: 'lots',
        INITLESS_ADMIN_TOKEN: 'short',
      }),
    (err) => {
      assert.ok(isInitlessError(err, 'ERR_CONFIG_INVALID'))
      assert.match(err.message, /INITLESS_GATEWAY_PORT/)
      assert.match(err.message, /INITLESS_MAX_BODY/)
      assert.match(err.message, /INITLESS_ADMIN_TOKEN/)
      return true
    },
  )
})
