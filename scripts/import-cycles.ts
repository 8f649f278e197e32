// The import-cycle check of `npm run check` (node --import tsx scripts/import-cycles.ts): builds the graph of relative imports between the
// TypeScript files (type-only imports included: a cycle of types is still a cycle in the design)
// and fails listing every cycle. No dependency: the sources are read with one regular expression,
// which the formatter's one-import-per-statement layout keeps reliable.
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/** Folders whose .ts files are checked. */
export const DIRS = ['gateway', 'executor', 'shared', 'cli', 'bench', 'test', 'scripts']

const IMPORT_RE = /(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s*['"](\.{1,2}\/[^'"]+)['"]/g

function tsFiles(dir: string): string[] {
  if (!existsSync(dir)) return []
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    if (e.name === 'node_modules' || e.name.startsWith('.') || e.name === 'fixtures') return []
    const path = join(dir, e.name)
    return e.isDirectory() ? tsFiles(path) : e.name.endsWith('.ts') ? [path] : []
  })
}

/**
 * file -> the files it imports (paths relative to `root`).
 */
export function importGraph(root: string, dirs: readonly string[] = DIRS): Map<string, string[]> {
  const graph = new Map<string, string[]>()
  for (const file of dirs.flatMap((d) => tsFiles(join(root, d)))) {
    const text = readFileSync(file, 'utf8')
    const targets = [...text.matchAll(IMPORT_RE)]
      .map((m) => resolve(dirname(file), m[1]!))
      .filter((p) => p.endsWith('.ts'))
      .map((p) => relative(root, p))
    graph.set(relative(root, file), [...new Set(targets)])
  }
  return graph
}

/**
 * Every cycle, as the files of one strongly connected component (Tarjan), sorted.
 */
export function findCycles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  let next = 0
  const index = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const onStack = new Set<string>()
  const cycles: string[][] = []
  const visit = (v: string) => {
    index.set(v, next)
    low.set(v, next++)
    stack.push(v)
    onStack.add(v)
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w)
        low.set(v, Math.min(low.get(v)!, low.get(w)!))
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!))
      }
    }
    if (low.get(v) !== index.get(v)) return
    const component: string[] = []
    let w: string
    do {
      w = stack.pop()!
      onStack.delete(w)
      component.push(w)
    } while (w !== v)
    if (component.length > 1 || (graph.get(v) ?? []).includes(v)) cycles.push(component.sort())
  }
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) visit(v)
  return cycles
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = new URL('..', import.meta.url).pathname
  const graph = importGraph(root)
  const cycles = findCycles(graph)
  if (cycles.length) {
    console.error(`import cycles (${cycles.length}):`)
    for (const c of cycles) console.error(`  ${c.join(' <-> ')}`)
    process.exit(1)
  }
  console.log(`import-cycles: ${graph.size} files, no cycle`)
}
