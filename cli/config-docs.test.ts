import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import type { z } from 'zod'
import { executorEnvSchema } from '../executor/config.ts'
import { gatewayEnvSchema } from '../gateway/config.ts'
import { commonEnvSchema, parseEnv } from '../shared/config-schema.ts'

interface Row {
  readonly keys: string[]
  readonly defaults: string[]
}

/** The rows of the first table after the paragraph that starts with `heading`. */
function tableAfter(doc: string, heading: string): Row[] {
  const start = doc.indexOf(heading)
  assert.ok(start >= 0, `docs/configuration.md has a '${heading}' table`)
  const rows: Row[] = []
  let inTable = false
  for (const line of doc.slice(start).split('\n')) {
    if (!line.startsWith('|')) {
      if (inTable) break
      continue
    }
    inTable = true
    const [keys = '', defaults = ''] = line.split('|').slice(1, 3)
    const found = [...keys.matchAll(/`(INITLESS_[A-Z0-9_]+)`/g)].map((m) => m[1]!)
    if (found.length)
      rows.push({ keys: found, defaults: [...defaults.matchAll(/`([^`]*)`/g)].map((m) => m[1]!) })
  }
  return rows
}

const SECTIONS: [string, z.ZodObject<z.ZodRawShape>, readonly string[]][] = [
  ['Shared by every process', commonEnvSchema, []],
  ['Executor', executorEnvSchema, Object.keys(commonEnvSchema.shape)],
  ['Gateway:', gatewayEnvSchema, Object.keys(commonEnvSchema.shape)],
]

test('docs/configuration.md lists every setting of each process, and only those', async () => {
  const doc = await readFile(join(import.meta.dirname, '..', 'docs', 'configuration.md'), 'utf8')
  for (const [heading, schema, inherited] of SECTIONS) {
    const listed = tableAfter(doc, heading).flatMap((r) => r.keys)
    const own = Object.keys(schema.shape).filter((k) => !inherited.includes(k))
    assert.deepEqual([...listed].sort(), [...own].sort(), `'${heading}' table against its schema`)
  }
})

test('a default written in docs/configuration.md is the schema default', async () => {
  const doc = await readFile(join(import.meta.dirname, '..', 'docs', 'configuration.md'), 'utf8')
  let checked = 0
  for (const [heading, schema] of SECTIONS) {
    const defaults = parseEnv(schema, {}) as Record<string, unknown>
    for (const row of tableAfter(doc, heading)) {
      // Defaults described in words (hostname, number of CPUs, unset) have no value to compare.
      if (row.defaults.length !== row.keys.length) continue
      row.keys.forEach((key, i) => {
        const written = parseEnv(schema, { [key]: row.defaults[i] }) as Record<string, unknown>
        assert.deepEqual(written[key], defaults[key], `${key}: documented default '${row.defaults[i]}'`)
        checked++
      })
    }
  }
  assert.ok(checked >= 20, `compared ${checked} defaults`)
})
