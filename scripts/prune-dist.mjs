// The compiled files in dist/ whose TypeScript source is gone: tsc never deletes an output, so a
// removed or renamed module would stay importable from dist/ (production runs dist/) and hide a
// missing import until a clean build. scripts/build.mjs removes them after every compile.
import { existsSync, readdirSync, rmSync } from 'node:fs'
import { join, relative } from 'node:path'

/** @param {string} dir @returns {string[]} */
function files(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)],
  )
}

/**
 * `dist`'s `.js` and `.js.map` files without a `.ts` source at the same place under `root`.
 * @param {string} dist @param {string} root @returns {string[]}
 */
export function staleOutputs(dist, root) {
  if (!existsSync(dist)) return []
  return files(dist).filter((f) => {
    const m = /^(.*)\.js(\.map)?$/.exec(relative(dist, f))
    return m !== null && !existsSync(join(root, `${m[1]}.ts`))
  })
}

/** Remove them; returns what was removed. @param {string} dist @param {string} root */
export function pruneStaleOutputs(dist, root) {
  const stale = staleOutputs(dist, root)
  for (const f of stale) rmSync(f)
  return stale
}
