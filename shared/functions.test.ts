import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { isInitlessError } from './errors.ts'
import { loadFunctionDefs, selectFunctions, type FunctionSet } from './functions.ts'
import type { ManifestProblem } from './manifest.ts'

let root: string
let set: FunctionSet

async function writeFunction(name: string, yaml: string): Promise<void> {
  await mkdir(join(root, name), { recursive: true })
  await writeFile(join(root, name, 'function.yaml'), yaml)
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'initless-functions-'))
  await writeFunction('beta', 'port: 9000\n')
  await writeFunction('alpha', 'name: alpha\nport: 8080\nscaling:\n  concurrency: 4\n')
  await writeFunction('broken', 'port: 70000\n')
  await writeFunction('mismatch', 'name: other\nport: 80\n')
  await writeFunction('Bad_Name', 'port: 80\n')
  // Not functions: a folder without a manifest and a loose file.
  await mkdir(join(root, 'shared-assets'))
  await writeFile(join(root, 'shared-assets', 'logo.png'), 'png')
  await writeFile(join(root, 'README.md'), '# functions')
  set = await loadFunctionDefs(root)
})

after(async () => {
  await rm(root, { recursive: true, force: true })
})

describe('loadFunctionDefs', () => {
  test('valid functions load, sorted by name, with absolute paths', () => {
    assert.deepEqual(
      set.functions.map((f) => f.name),
      ['alpha', 'beta'],
    )
    const alpha = set.functions[0]!
    assert.equal(alpha.dir, join(root, 'alpha'))
    assert.equal(alpha.manifestFile, join(root, 'alpha', 'function.yaml'))
    assert.equal(alpha.manifest.name, 'alpha')
    assert.equal(alpha.manifest.port, 8080)
    assert.equal(alpha.manifest.scaling.concurrency, 4)
    // The folder names the function when the manifest does not.
    assert.equal(set.functions[1]!.manifest.name, 'beta')
  })

  test('invalid manifests and folder names are problems; folders without a manifest are ignored', () => {
    assert.deepEqual(
      set.problems.map((p) => [p.name, p.error.code]),
      [
        ['Bad_Name', 'ERR_FUNCTION_NAME_INVALID'],
        ['broken', 'ERR_MANIFEST_INVALID'],
        ['mismatch', 'ERR_MANIFEST_INVALID'],
      ],
    )
    const all = [...set.functions.map((f) => f.name), ...set.problems.map((p) => p.name)]
    assert.ok(!all.includes('shared-assets'))
    assert.ok(!all.includes('README.md'))
  })

  test('an invalid manifest names its file and field', () => {
    const broken = set.problems.find((p) => p.name === 'broken')!
    const file = join(root, 'broken', 'function.yaml')
    assert.equal(broken.file, file)
    assert.ok(broken.error.message.startsWith(`${file}: invalid manifest`), broken.error.message)
    const problems = broken.error.details.problems as ManifestProblem[]
    assert.deepEqual(
      problems.map((p) => p.field),
      ['port'],
    )
    const mismatch = set.problems.find((p) => p.name === 'mismatch')!
    assert.deepEqual(mismatch.error.details.problems, [
      { field: 'name', message: "'other' must match its folder name 'mismatch'" },
    ])
  })

  test('a folder name that is not a DNS label is reported', () => {
    const bad = set.problems.find((p) => p.name === 'Bad_Name')!
    assert.equal(bad.file, join(root, 'Bad_Name', 'function.yaml'))
    assert.match(bad.error.message, /folder name 'Bad_Name' is not a valid function name \(DNS label\)/)
  })

  test('a missing functions folder is an empty set', async () => {
    assert.deepEqual(await loadFunctionDefs(join(root, 'does-not-exist')), { functions: [], problems: [] })
  })

  test('a functions "folder" that is a file is an error, not an empty set', async () => {
    await assert.rejects(loadFunctionDefs(join(root, 'README.md')), { code: 'ENOTDIR' })
  })
})

describe('selectFunctions', () => {
  test('no names selects every valid function', () => {
    assert.deepEqual(
      selectFunctions(set, []).map((f) => f.name),
      ['alpha', 'beta'],
    )
  })

  test('names are returned in the order asked', () => {
    assert.deepEqual(
      selectFunctions(set, ['beta', 'alpha']).map((f) => f.name),
      ['beta', 'alpha'],
    )
  })

  test('an unknown name throws ERR_FUNCTION_NOT_FOUND naming the known ones', () => {
    assert.throws(
      () => selectFunctions(set, ['alpha', 'nope']),
      (err: unknown) => {
        assert.ok(isInitlessError(err, 'ERR_FUNCTION_NOT_FOUND'))
        assert.equal(err.message, "unknown function 'nope' (known: alpha, beta)")
        return true
      },
    )
  })

  test('an unknown name in an empty set says none are known', () => {
    assert.throws(() => selectFunctions({ functions: [], problems: [] }, ['x']), {
      code: 'ERR_FUNCTION_NOT_FOUND',
      message: "unknown function 'x' (known: none)",
    })
  })

  test("a name whose manifest is invalid throws that manifest's error", () => {
    const broken = set.problems.find((p) => p.name === 'broken')!
    assert.throws(
      () => selectFunctions(set, ['broken']),
      (err: unknown) => {
        assert.equal(err, broken.error)
        assert.ok(isInitlessError(err, 'ERR_MANIFEST_INVALID'))
        return true
      },
    )
    assert.throws(() => selectFunctions(set, ['Bad_Name']), { code: 'ERR_FUNCTION_NAME_INVALID' })
  })
})
