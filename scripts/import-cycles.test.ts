import assert from 'node:assert/strict'
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { findCycles, importGraph } from './import-cycles.ts'

test('findCycles: none in a tree, each strongly connected group once, self-imports too', () => {
  const cases: { graph: Record<string, string[]>; cycles: string[][] }[] = [
    { graph: { a: ['b', 'c'], b: ['c'], c: [] }, cycles: [] },
    { graph: { a: ['b'], b: ['c'], c: ['a'], d: ['a'] }, cycles: [['a', 'b', 'c']] },
    { graph: { a: ['a'], b: ['c'], c: ['b'] }, cycles: [['a'], ['b', 'c']] },
  ]
  for (const c of cases) assert.deepEqual(findCycles(new Map(Object.entries(c.graph))), c.cycles)
})

test('importGraph reads relative imports and re-exports, multi-line and type-only ones too', () => {
  const root = mkdtempSync(join(tmpdir(), 'initless-cycles-'))
  try {
    mkdirSync(join(root, 'gateway'))
    mkdirSync(join(root, 'shared'))
    writeFileSync(
      join(root, 'gateway', 'a.ts'),
      "import { x } from 'node:fs'\nimport {\n  b,\n  type B,\n} from '../shared/b.ts'\n",
    )
    writeFileSync(join(root, 'shared', 'b.ts'), "export type { A } from '../gateway/a.ts'\n")
    const graph = importGraph(root, ['gateway', 'shared'])
    assert.deepEqual(graph.get('gateway/a.ts'), ['shared/b.ts'])
    assert.deepEqual(graph.get('shared/b.ts'), ['gateway/a.ts'])
    assert.deepEqual(findCycles(graph), [['gateway/a.ts', 'shared/b.ts']])
  } finally {
    rmSync(root, { recursive: true, force: true })
  }
})
