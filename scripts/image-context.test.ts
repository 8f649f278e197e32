/**
 * The image build copies single scripts, not scripts/: every script it copies must find the scripts
 * it imports in the image too, both in the Dockerfile's COPY and through .dockerignore, which keeps
 * everything else out of the build context. Breaking this fails only the slow compose test
 * (test/compose.test.ts) otherwise.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { dirname, join, normalize } from 'node:path'
import { test } from 'node:test'

const root = join(import.meta.dirname, '..')
const read = (path: string) => readFileSync(join(root, path), 'utf8')

/** The scripts/ files named by COPY instructions (sources only: every word but the destination). */
function copiedScripts(dockerfile: string): string[] {
  return dockerfile
    .split('\n')
    .filter((line) => /^COPY\s/.test(line) && !line.includes('--from='))
    .flatMap((line) => line.trim().split(/\s+/).slice(1, -1))
    .filter((source) => source.startsWith('scripts/'))
}

/** The relative modules a script imports, as paths from the repository root. */
function relativeImports(path: string, source: string): string[] {
  return [...source.matchAll(/\bfrom\s+['"](\.{1,2}\/[^'"]+)['"]/g)].map((m) =>
    normalize(join(dirname(path), m[1]!)),
  )
}

/** The single paths .dockerignore lets back in after its leading `*`. */
function allowedPaths(dockerignore: string): Set<string> {
  return new Set(
    dockerignore
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line.startsWith('!'))
      .map((line) => line.slice(1)),
  )
}

test('every script the image build copies has what it imports copied and in the build context', () => {
  const copied = copiedScripts(read('Dockerfile'))
  const allowed = allowedPaths(read('.dockerignore'))
  assert.ok(copied.includes('scripts/build.mjs'), 'the Dockerfile copies scripts/build.mjs')
  for (const script of copied) {
    assert.ok(allowed.has(script), `.dockerignore lets ${script} into the build context`)
    for (const imported of relativeImports(script, read(script))) {
      assert.ok(copied.includes(imported), `${script} imports ${imported}: the Dockerfile copies it too`)
      assert.ok(allowed.has(imported), `${script} imports ${imported}: .dockerignore lets it in`)
    }
  }
})

test('the parsers: COPY sources, relative imports, allowed paths', () => {
  assert.deepEqual(
    copiedScripts('COPY a.json ./\nCOPY scripts/x.mjs scripts/y.sh ./scripts/\nCOPY --from=b /o /\n'),
    ['scripts/x.mjs', 'scripts/y.sh'],
  )
  assert.deepEqual(
    relativeImports('scripts/x.mjs', "import a from 'node:fs'\nimport { b } from './y.mjs'\n"),
    ['scripts/y.mjs'],
  )
  assert.deepEqual([...allowedPaths('*\n!bin\n!scripts/x.mjs\n**/*.log\n')], ['bin', 'scripts/x.mjs'])
})
