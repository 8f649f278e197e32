#!/usr/bin/env node
// `npm run build`: compiles the TypeScript sources with tsc (tsconfig.build.json, which rewrites
// the `.ts` import extensions to `.js`) into dist/, then copies beside their modules the C sources
// the executor reads at run time (the sandbox helper's install path is named after its source's
// hash; the restore self-test compiles its probe from source when no prebuilt one is there).
// Production runs dist/: `node dist/gateway/main.js`, `node dist/executor/main.js`, bin/initless.mjs.
import { spawnSync } from 'node:child_process'
import { copyFileSync, mkdirSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc')
const result = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], {
  cwd: root,
  stdio: 'inherit',
})
if (result.status !== 0) {
  console.error('build: tsc failed (errors above)')
  process.exit(result.status ?? 1)
}
/** C sources the compiled modules locate with `new URL('./…', import.meta.url)`. */
const ASSETS = ['executor/native/sandbox-helper.c', 'executor/native/probe-server.c']
for (const asset of ASSETS) {
  mkdirSync(dirname(join(root, 'dist', asset)), { recursive: true })
  copyFileSync(join(root, asset), join(root, 'dist', asset))
}
