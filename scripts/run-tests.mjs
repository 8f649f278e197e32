#!/usr/bin/env node
// Runs the test suite with node:test through tsx. Unit tests live beside the code (*.test.ts);
// integration tests live in test/ and talk to the real Redis, Docker, runc and CRIU. All files run
// one at a time: the integration tests share Redis, Docker and the host's network namespaces.
import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { join, relative } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const mode = process.argv.includes('--unit')
  ? 'unit'
  : process.argv.includes('--integration')
    ? 'integration'
    : 'all'
const only = process.argv.slice(2).filter((a) => !a.startsWith('--'))

/** @param {string} dir @returns {string[]} */
function walk(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    if (entry.name === 'node_modules' || entry.name.startsWith('.')) return []
    const path = join(dir, entry.name)
    return entry.isDirectory() ? walk(path) : entry.name.endsWith('.test.ts') ? [path] : []
  })
}

const all = walk(root)
  .map((p) => relative(root, p))
  .sort()
const unit = all.filter((p) => !p.startsWith('test/'))
const integration = all.filter((p) => p.startsWith('test/'))
let files = mode === 'unit' ? unit : mode === 'integration' ? integration : [...unit, ...integration]
if (only.length) files = files.filter((f) => only.some((o) => f.includes(o)))
if (!files.length) {
  console.error('run-tests: no test files matched')
  process.exit(1)
}
const result = spawnSync(
  process.execPath,
  [
    '--import',
    'tsx',
    '--test',
    '--test-concurrency=1',
    '--test-timeout=900000',
    '--test-force-exit',
    '--test-reporter=spec',
    ...files,
  ],
  { cwd: root, stdio: 'inherit' },
)
process.exit(result.status ?? 1)
