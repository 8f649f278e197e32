/**
 * The functions the gateway serves: name -> the active version's manifest. In a running gateway
 * it follows the function registry live (createWatchedCatalog over a FunctionWatcher): a deploy,
 * a rollback or a delete changes what the next request sees, without a restart. Routes only read it.
 */
import type { FunctionWatcher } from '../shared/function-watcher.ts'
import type { Manifest } from '../shared/manifest.ts'

export interface FunctionCatalog {
  get(name: string): Manifest | undefined
  list(): readonly Manifest[]
  /** The active version of `name` (undefined for catalogs without versions). */
  version(name: string): string | undefined
}

/** A catalog over a fixed set of manifests, without versions (tests, harnesses). */
export function createStaticCatalog(manifests: Iterable<Manifest>): FunctionCatalog {
  const byName = new Map<string, Manifest>()
  for (const m of manifests) byName.set(m.name, m)
  const sorted = [...byName.values()].sort((a, b) => a.name.localeCompare(b.name))
  return { get: (name) => byName.get(name), list: () => sorted, version: () => undefined }
}

/** The function registry's active versions, as the watcher holds them. */
export function createWatchedCatalog(watcher: Pick<FunctionWatcher, 'active' | 'list'>): FunctionCatalog {
  return {
    get: (name) => watcher.active(name)?.manifest,
    list: () =>
      watcher
        .list()
        .map((r) => watcher.active(r.name)?.manifest)
        .filter((m): m is Manifest => m !== undefined),
    version: (name) => watcher.active(name)?.version,
  }
}
