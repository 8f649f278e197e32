import assert from 'node:assert/strict'
import { hostname } from 'node:os'
import { test } from 'node:test'
import { loadExecutorConfig } from './config.ts'

test('defaults: one host, its hostname as host id, no advertised address', () => {
  const c = loadExecutorConfig({})
  assert.equal(c.hostId, hostname())
  assert.equal(c.INITLESS_SUBNET, '10.213.0.0/16')
  assert.equal(c.INITLESS_ADVERTISE_ADDRESS, undefined)
})

test('several hosts: a subnet and the address peers reach this host at', () => {
  const c = loadExecutorConfig({
    INITLESS_HOST_ID: 'host-b',
    INITLESS_SUBNET: '10.214.0.0/16',
    INITLESS_ADVERTISE_ADDRESS: '192.168.10.12',
  })
  assert.equal(c.hostId, 'host-b')
  assert.equal(c.INITLESS_ADVERTISE_ADDRESS, '192.168.10.12')
})

test('an advertised address that is no IPv4 address, or lies inside the subnet, is refused', () => {
  for (const [address, message] of [
    ['192.168.10', /INITLESS_ADVERTISE_ADDRESS: expected an IPv4 address/],
    ['192.168.10.256', /INITLESS_ADVERTISE_ADDRESS: expected an IPv4 address/],
    ['host-b.example', /INITLESS_ADVERTISE_ADDRESS: expected an IPv4 address/],
    ['10.213.0.1', /INITLESS_ADVERTISE_ADDRESS: 10\.213\.0\.1 is inside INITLESS_SUBNET 10\.213\.0\.0\/16/],
  ] as const) {
    assert.throws(() => loadExecutorConfig({ INITLESS_ADVERTISE_ADDRESS: address }), {
      code: 'ERR_CONFIG_INVALID',
      message,
    })
  }
})
