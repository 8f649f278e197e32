/**
 * The functions an executor serves, from the function registry: each function's active version,
 * its build context unpacked under `<state>/contexts/<fn>/<version>/` (the folder the image is
 * built from). Instance manager, reaper and pools read the active definitions synchronously.
 */
import { randomBytes } from 'node:crypto'
import { chmod, mkdir, readdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { InitlessError } from '../../shared/errors.ts'
import type { FunctionRegistry, FunctionVersion } from '../../shared/function-registry.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { MANIFEST_FILE } from '../../shared/manifest.ts'
import { readTar } from '../../shared/tar.ts'

export interface FunctionSource {
  /** The active definition of every function that has one on this host. */
  functions(): readonly FunctionDef[]
  /** The definition of one version, its build context unpacked here first if needed. */
  materialize(fn: string, version: FunctionVersion): Promise<FunctionDef>
  /** Make `def` the function's active definition, or drop the function (undefined). */
  setActive(fn: string, def: FunctionDef | undefined): void
  /** Versions whose context is unpacked on this host. */
  unpacked(fn: string): Promise<string[]>
  /** Remove unpacked contexts of `fn` except `keep` (all when `keep` is empty). */
  removeContexts(fn: string, keep: ReadonlySet<string>): Promise<string[]>
}

/** Unpacked contexts are never larger than this (the gateway's upload limit is lower). */
const MAX_CONTEXT_BYTES = 1024 * 1024 * 1024

export function createFunctionSource(deps: {
  readonly stateDir: string
  readonly registry: Pick<FunctionRegistry, 'context'>
}): FunctionSource {
  const root = join(deps.stateDir, 'contexts')
  const active = new Map<string, FunctionDef>()
  const unpacking = new Map<string, Promise<void>>()

  const defOf = (fn: string, v: FunctionVersion): FunctionDef => {
    const dir = join(root, fn, v.version)
    return {
      name: fn,
      dir,
      manifestFile: join(dir, MANIFEST_FILE),
      manifest: v.manifest,
      version: v.version,
      ...(v.image?.digest ? { image: { ref: v.image.digest, tag: v.image.tag } } : {}),
    }
  }

  async function unpack(fn: string, version: string, dir: string): Promise<void> {
    const tar = await deps.registry.context(fn, version)
    if (!tar)
      throw new InitlessError(
        'ERR_VERSION_NOT_FOUND',
        `${fn}: the build context of version ${version} is gone`,
      )
    const entries = readTar(tar, MAX_CONTEXT_BYTES)
    const tmp = join(root, fn, `.tmp-${version}-${randomBytes(4).toString('hex')}`)
    await mkdir(tmp, { recursive: true, mode: 0o700 })
    try {
      for (const e of entries) {
        const path = join(tmp, e.path)
        await mkdir(e.type === 'dir' ? path : dirname(path), { recursive: true })
        if (e.type === 'file') await writeFile(path, e.content, { mode: e.mode & 0o777 })
        else if (e.type === 'symlink' && e.target !== undefined) await symlink(e.target, path)
        if (e.type !== 'symlink') await chmod(path, e.mode & 0o777 || (e.type === 'dir' ? 0o755 : 0o644))
      }
      await rename(tmp, dir)
    } catch (err) {
      await rm(tmp, { recursive: true, force: true })
      throw err
    }
  }

  return {
    functions: () => [...active.values()],
    async materialize(fn, v) {
      const def = defOf(fn, v)
      const isThere = await stat(def.dir).then(
        () => true,
        () => false,
      )
      if (!isThere) {
        let p = unpacking.get(def.dir)
        if (!p) {
          p = unpack(fn, v.version, def.dir).finally(() => unpacking.delete(def.dir))
          unpacking.set(def.dir, p)
        }
        await p
      }
      return def
    },
    setActive(fn, def) {
      if (def) active.set(fn, def)
      else active.delete(fn)
    },
    async unpacked(fn) {
      return (await readdir(join(root, fn)).catch(() => [] as string[])).filter((n) => !n.startsWith('.'))
    },
    async removeContexts(fn, keep) {
      const removed: string[] = []
      for (const name of await readdir(join(root, fn)).catch(() => [] as string[])) {
        // `.tmp-` folders are unpacks under way (removed with the function only).
        if (keep.has(name) || (keep.size && name.startsWith('.'))) continue
        await rm(join(root, fn, name), { recursive: true, force: true })
        removed.push(name)
      }
      if (!keep.size) await rm(join(root, fn), { recursive: true, force: true })
      return removed
    },
  }
}
