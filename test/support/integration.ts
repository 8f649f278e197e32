/**
 * Integration tests talk to the real Redis, Docker engine, runc and CRIU. In CI (CI=true) those are
 * provisioned by scripts/test.sh, so a missing one is a failure, never a skip. Run by hand on a
 * machine without them, a test skips and says why.
 */
import { execFileSync } from 'node:child_process'
import type { TestContext } from 'node:test'

export const isCI = process.env.CI === 'true' || process.env.CI === '1'

function missing(): string | undefined {
  if (process.getuid?.() !== 0) return 'integration tests need root (runc, CRIU, network namespaces)'
  for (const [cmd, args] of [
    ['docker', ['info', '--format', '{{.ServerVersion}}']],
    ['redis-cli', ['ping']],
    ['criu', ['--version']],
    ['runc', ['--version']],
  ] as const) {
    try {
      execFileSync(cmd, args, { stdio: 'ignore', timeout: 10_000 })
    } catch {
      return `${cmd} is not available or not running (run scripts/provision.sh)`
    }
  }
  return undefined
}

let cached: string | undefined | null = null

/** Call first in every integration test: fails in CI, skips elsewhere, when a service is missing. */
export function requireServices(t: TestContext): boolean {
  if (cached === null) cached = missing()
  if (cached === undefined) return true
  if (isCI) throw new Error(`integration prerequisites missing in CI: ${cached}`)
  t.skip(cached)
  return false
}

export const REDIS_URL = process.env.INITLESS_REDIS_URL ?? 'redis://127.0.0.1:6379'
