#!/usr/bin/env node
// `npm run build`: compiles the TypeScript sources with tsc (tsconfig.build.json, which rewrites
// the `.ts` import extensions to `.js`) into dist/. The executor's C programs have their own build
// (scripts/build-native.sh): the executor runs them from where that installs them.
// Production runs dist/: `node dist/gateway/main.js`, `node dist/executor/main.js`, bin/initless.mjs.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { pruneStaleOutputs } from './prune-dist.mjs'

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
const removed = pruneStaleOutputs(join(root, 'dist'), root)
if (removed.length) console.log(`build: removed ${removed.length} file(s) of deleted sources from dist/`)
