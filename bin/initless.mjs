#!/usr/bin/env node
// Entry point of the `initless` CLI: runs the compiled JavaScript in dist/ (`npm run build`).
import { existsSync } from 'node:fs'

const main = new URL('../dist/cli/main.js', import.meta.url)
if (!existsSync(main)) {
  console.error('initless: not built yet (no dist/cli/main.js): run `npm run build` first')
  process.exit(2)
}
await import(main.href)
