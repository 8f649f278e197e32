import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { canonicalCidr, formatIp, parseCidr, parseIp, subnetHas, subnetsOverlap } from './subnet.ts'

describe('parseCidr', () => {
  const valid: Array<[string, string, number]> = [
    ['10.213.0.0/16', '10.213.0.0', 16],
    ['10.213.0.1/16', '10.213.0.0', 16], // host bits are dropped
    ['10.213.77.9/24', '10.213.77.0', 24],
    ['192.168.1.5/30', '192.168.1.4', 30],
    ['172.16.255.255/12', '172.16.0.0', 12],
    ['10.255.255.255/8', '10.0.0.0', 8],
    ['255.255.255.255/30', '255.255.255.252', 30],
  ]
  for (const [cidr, base, bits] of valid) {
    test(`${cidr} -> ${base}/${bits}`, () => {
      const c = parseCidr(cidr)
      assert.equal(formatIp(c.base), base)
      assert.equal(c.bits, bits)
    })
  }

  const invalid = [
    '10.0.0.0/7',
    '10.0.0.0/31',
    '10.0.0.0/32',
    '256.0.0.0/16',
    '10.0.0.300/24',
    '10.0.0/16',
    '10.0.0.0',
    '10.0.0.0/',
    '10.0.0.0/16 ',
    'a.b.c.d/16',
    '::1/64',
    '',
  ]
  for (const cidr of invalid) {
    test(`'${cidr}' is rejected`, () => {
      assert.throws(() => parseCidr(cidr), {
        message: `invalid subnet '${cidr}': expected an IPv4 CIDR between /8 and /30`,
      })
    })
  }
})

test('canonicalCidr clears the host bits', () => {
  assert.equal(canonicalCidr('10.214.3.7/16'), '10.214.0.0/16')
  assert.equal(canonicalCidr('10.213.0.0/16'), '10.213.0.0/16')
  assert.throws(() => canonicalCidr('10.213.0.0'), /invalid subnet/)
})

describe('subnetsOverlap', () => {
  const cases: [string, string, boolean][] = [
    ['10.213.0.0/16', '10.213.0.0/16', true],
    ['10.213.0.0/16', '10.213.77.0/24', true],
    ['10.213.77.0/24', '10.213.0.0/16', true],
    ['10.0.0.0/8', '10.214.0.0/16', true],
    ['10.213.0.0/16', '10.214.0.0/16', false],
    ['10.213.0.0/16', '10.212.255.252/30', false],
    ['10.213.255.252/30', '10.213.255.248/30', false],
    ['10.213.0.0/16', 'not a subnet', false],
  ]
  for (const [a, b, overlap] of cases) {
    test(`${a} and ${b}: ${overlap ? 'overlap' : 'apart'}`, () => assert.equal(subnetsOverlap(a, b), overlap))
  }
})

test('subnetHas', () => {
  assert.equal(subnetHas('10.213.0.0/16', '10.213.255.255'), true)
  assert.equal(subnetHas('10.213.0.0/16', '10.213.0.0'), true)
  assert.equal(subnetHas('10.213.0.0/16', '10.214.0.1'), false)
  assert.equal(subnetHas('10.213.0.0/16', '10.212.255.255'), false)
  assert.equal(subnetHas('10.213.0.0/16', '10.213.0'), false)
  assert.equal(subnetHas('10.213.0.0/16', '10.213.0.256'), false)
})

test('parseIp', () => {
  assert.equal(parseIp('10.213.0.1'), 10 * 2 ** 24 + 213 * 2 ** 16 + 1)
  assert.equal(parseIp('0.0.0.0'), 0)
  for (const bad of ['10.213.0', '10.213.0.256', '10.213.0.1.2', 'a.b.c.d', '10.213.0.-1', ''])
    assert.equal(parseIp(bad), undefined, bad)
})
