/**
 * Starts initless's own processes the way production runs them: `node dist/<process>/main.js`,
 * the output of `npm run build`.
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { InitlessError } from '../shared/errors.ts'
import { packageRoot } from '../shared/package-root.ts'

export type ProcessName = 'gateway' | 'executor' | 'cli'

/** The compiled entry of a process; a clear error when the build is missing. */
export function builtEntry(name: ProcessName): string {
  const entry = join(packageRoot(), 'dist', name, 'main.js')
  if (!existsSync(entry))
    throw new InitlessError('ERR_CONFIG_INVALID', `${entry} is missing: run \`npm run build\` first`)
  return entry
}
