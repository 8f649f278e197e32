import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import { ERRORS, InitlessError, isInitlessError } from './errors.ts'

test('the error table in docs/errors.md lists every code, and only codes that exist, with their HTTP status', async () => {
  const section = await readFile(join(import.meta.dirname, '..', 'docs', 'errors.md'), 'utf8')
  const listed = new Map<string, string>()
  for (const row of section.split('\n').filter((l) => l.startsWith('| `ERR_'))) {
    const [codes, status] = row
      .split('|')
      .slice(1, 3)
      .map((c) => c.trim())
    for (const m of codes!.matchAll(/`(ERR_[A-Z_]+)`/g)) listed.set(m[1]!, status!)
  }
  assert.deepEqual(
    [...listed.keys()].filter((c) => !(c in ERRORS)),
    [],
    'codes in docs/errors.md that do not exist',
  )
  assert.deepEqual(
    Object.keys(ERRORS).filter((c) => !listed.has(c)),
    [],
    'codes missing from docs/errors.md',
  )
  // A status the gateway answers with is the one in the table; "—" marks codes no HTTP client sees.
  for (const [code, status] of listed)
    if (status !== '—') assert.equal(status, String(ERRORS[code as keyof typeof ERRORS].status), code)
})

test('isInitlessError narrows by code, not by class', () => {
  const err = new InitlessError('ERR_STATE_DIR_IN_USE', 'in use', { details: { stateDir: '/x' } })
  assert.equal(isInitlessError(err, 'ERR_STATE_DIR_IN_USE'), true)
  assert.equal(isInitlessError({ code: 'ERR_STATE_DIR_IN_USE' }), true)
  assert.equal(isInitlessError({ code: 'ENOENT' }), false)
  assert.equal(err.retryable, false)
  assert.deepEqual(err.details, { stateDir: '/x' })
})
