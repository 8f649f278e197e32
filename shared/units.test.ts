import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { formatAge, formatBytes, parseBytes, parseDurationMs } from './units.ts'

const Ki = 1024
const Mi = 1024 ** 2
const Gi = 1024 ** 3

describe('parseDurationMs', () => {
  const valid: Array<[unknown, number]> = [
    ['500ms', 500],
    ['30s', 30_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['1.5s', 1500],
    ['0.5m', 30_000],
    ['10', 10], // a bare number string is milliseconds
    ['0', 0],
    ['  30s  ', 30_000],
    ['30 s', 30_000],
    ['30S', 30_000],
    ['2MS', 2],
    ['1.0004s', 1000], // rounded to whole ms
    [0, 0],
    [250, 250],
    [1.5, 1.5], // numbers are taken as they are
  ]
  for (const [input, expected] of valid) {
    test(`${JSON.stringify(input)} -> ${expected}`, () => {
      assert.equal(parseDurationMs(input), expected)
    })
  }

  const invalid: unknown[] = [
    'soon',
    '',
    '   ',
    's',
    '-1s',
    '1d',
    '1 minute',
    '1m30s',
    '.5s',
    '5.s',
    '1e3',
    -1,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    undefined,
    null,
    true,
    {},
    ['1s'],
  ]
  for (const input of invalid) {
    test(`${String(JSON.stringify(input) ?? input)} is rejected`, () => {
      assert.equal(parseDurationMs(input), undefined)
    })
  }
})

describe('parseBytes', () => {
  const valid: Array<[unknown, number]> = [
    ['256Mi', 256 * Mi],
    ['2Gi', 2 * Gi],
    ['512Ki', 512 * Ki],
    ['512KiB', 512 * Ki],
    ['1MiB', Mi],
    ['1GiB', Gi],
    ['100MB', 100_000_000],
    ['100M', 100_000_000],
    ['4k', 4000],
    ['4kb', 4000],
    ['1G', 1_000_000_000],
    ['1GB', 1_000_000_000],
    ['1.5Gi', 1.5 * Gi],
    ['1024', 1024],
    ['1024b', 1024],
    ['1024B', 1024],
    ['  8 mi ', 8 * Mi],
    ['0', 0],
    [4096, 4096],
    [0, 0],
  ]
  for (const [input, expected] of valid) {
    test(`${JSON.stringify(input)} -> ${expected}`, () => {
      assert.equal(parseBytes(input), expected)
    })
  }

  const invalid: unknown[] = [
    'lots',
    '',
    'Mi',
    '1Xi',
    '1Ti', // no terabyte units
    '-1Mi',
    '1 2Mi',
    '1.5.2Mi',
    -1,
    1.5,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    undefined,
    null,
    {},
  ]
  for (const input of invalid) {
    test(`${String(JSON.stringify(input) ?? input)} is rejected`, () => {
      assert.equal(parseBytes(input), undefined)
    })
  }
})

describe('formatBytes', () => {
  const cases: Array<[number, string]> = [
    [0, '0 B'],
    [1, '1 B'],
    [1023, '1023 B'],
    [1024, '1.0 KiB'],
    [1536, '1.5 KiB'],
    [10 * Ki, '10 KiB'],
    [Mi, '1.0 MiB'],
    [128 * Mi, '128 MiB'],
    [512 * Mi, '512 MiB'],
    [2 * Gi, '2.0 GiB'],
    [1.25 * Gi, '1.3 GiB'],
    [Gi * 1024, '1.0 TiB'],
    [Gi * 1024 * 2048, '2048 TiB'], // TiB is the largest unit
  ]
  for (const [input, expected] of cases) {
    test(`${input} -> ${expected}`, () => {
      assert.equal(formatBytes(input), expected)
    })
  }
})

describe('formatAge', () => {
  const cases: Array<[number, string]> = [
    [0, '0s'],
    [499, '0s'],
    [500, '1s'],
    [45_000, '45s'],
    [89_000, '89s'],
    [90_000, '2m'], // 1.5 minutes rounds up
    [10 * 60_000, '10m'],
    [89 * 60_000, '89m'],
    [90 * 60_000, '2h'],
    [35 * 3_600_000, '35h'],
    [36 * 3_600_000, '2d'],
    [7 * 86_400_000, '7d'],
  ]
  for (const [input, expected] of cases) {
    test(`${input} ms -> ${expected}`, () => {
      assert.equal(formatAge(input), expected)
    })
  }
})
