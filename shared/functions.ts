/**
 * Reading the functions folder: every `<dir>/<name>/function.yaml`. An invalid manifest is returned
 * as a problem beside the valid functions; it never stops the others from loading.
 */
import { readdir, readFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { InitlessError } from './errors.ts'
import { FUNCTION_NAME_RE, MANIFEST_FILE, parseManifest, type Manifest } from './manifest.ts'
import { isSeccompFile, readSeccompProfile } from './seccomp.ts'

export interface FunctionDef {
  readonly name: string
  /** Absolute path of the function's folder: the Docker build context. */
  readonly dir: string
  readonly manifestFile: string
  readonly manifest: Manifest
  /** The function registry's version this definition is (unset for a folder read directly). */
  readonly version?: string
  /**
   * Its image, when it was published to INITLESS_IMAGE_REGISTRY: `ref`, a reference by digest
   * (`<registry>/<repo>@sha256:...`) every host pulls instead of building, and `tag`, the content
   * tag the deploying host gave it, which every host gives it too (retention removes by tag).
   */
  readonly image?: { readonly ref: string; readonly tag: string }
}

export interface FunctionProblem {
  readonly name: string
  readonly file: string
  readonly error: InitlessError
}

export interface FunctionSet {
  readonly functions: readonly FunctionDef[]
  readonly problems: readonly FunctionProblem[]
}

export async function loadFunctionDefs(functionsDir: string): Promise<FunctionSet> {
  const root = resolve(functionsDir)
  let names: string[]
  try {
    names = (await readdir(root, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { functions: [], problems: [] }
    throw err
  }
  const functions: FunctionDef[] = []
  const problems: FunctionProblem[] = []
  for (const name of names.sort()) {
    const dir = join(root, name)
    const file = join(dir, MANIFEST_FILE)
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch (err) {
      // A folder without a manifest is not a function (e.g. shared assets); say so only if unreadable.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        problems.push({
          name,
          file,
          error: new InitlessError('ERR_MANIFEST_INVALID', `${file}: unreadable: ${String(err)}`),
        })
      }
      continue
    }
    if (!FUNCTION_NAME_RE.test(name)) {
      problems.push({
        name,
        file,
        error: new InitlessError(
          'ERR_FUNCTION_NAME_INVALID',
          `${file}: folder name '${name}' is not a valid function name (DNS label)`,
        ),
      })
      continue
    }
    try {
      const manifest = parseManifest(text, file, name)
      // A profile file is checked now, so a bad one is reported before anything is built.
      if (isSeccompFile(manifest.security.seccomp))
        await readSeccompProfile(dir, manifest.security.seccomp, file)
      functions.push({ name, dir, manifestFile: file, manifest })
    } catch (err) {
      if (err instanceof InitlessError) problems.push({ name, file, error: err })
      else throw err
    }
  }
  return { functions, problems }
}

/** Pick functions by name; unknown names are an error naming what exists. */
export function selectFunctions(set: FunctionSet, names: readonly string[]): FunctionDef[] {
  if (!names.length) return [...set.functions]
  return names.map((n) => {
    const fn = set.functions.find((f) => f.name === n)
    if (fn) return fn
    const problem = set.problems.find((p) => p.name === n)
    if (problem) throw problem.error
    throw new InitlessError(
      'ERR_FUNCTION_NOT_FOUND',
      `unknown function '${n}' (known: ${set.functions.map((f) => f.name).join(', ') || 'none'})`,
    )
  })
}
