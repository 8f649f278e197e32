/**
 * The functions the gateway knows: name -> validated manifest. Filled once at start-up by the
 * composition root from the functions folder; routes only read it.
 */
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { errorMessage, isInitlessError } from '../shared/errors.ts'
import { FUNCTION_NAME_RE, MANIFEST_FILE, parseManifest, type Manifest } from '../shared/manifest.ts'

export interface FunctionCatalog {
  get(name: string): Manifest | undefined
  list(): readonly Manifest[]
}

/** A catalog over a fixed set of manifests (also the fake for tests). */
export function createStaticCatalog(manifests: Iterable<Manifest>): FunctionCatalog {
  const byName = new Map<string, Manifest>()
  for (const m of manifests) byName.set(m.name, m)
  const sorted = [...byName.values()].sort((a, b) => a.name.localeCompare(b.name))
  return { get: (name) => byName.get(name), list: () => sorted }
}

/**
 * Read every `<dir>/<name>/function.yaml`. An invalid manifest is logged with its problems and
 * skipped; the others still load. A missing folder yields an empty catalog.
 */
export async function loadFunctionCatalog(deps: { dir: string; logger: Logger }): Promise<FunctionCatalog> {
  const log = deps.logger.child({ module: 'catalog' })
  let entries: string[]
  try {
    entries = (await readdir(deps.dir, { withFileTypes: true }))
      .filter((e) => e.isDirectory())
      .map((e) => e.name)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      log.warn({ dir: deps.dir }, 'functions folder not found')
      return createStaticCatalog([])
    }
    throw err
  }
  const manifests: Manifest[] = []
  for (const name of entries.sort()) {
    if (!FUNCTION_NAME_RE.test(name)) continue
    const file = join(deps.dir, name, MANIFEST_FILE)
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        log.error({ file, err: errorMessage(err) }, 'manifest unreadable')
      continue
    }
    try {
      manifests.push(parseManifest(text, file, name))
    } catch (err) {
      const problems = isInitlessError(err) ? err.details.problems : undefined
      log.error({ file, err: errorMessage(err), problems }, 'invalid manifest skipped')
    }
  }
  log.info({ functions: manifests.map((m) => m.name) }, 'functions loaded')
  return createStaticCatalog(manifests)
}
