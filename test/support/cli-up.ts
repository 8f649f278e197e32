/**
 * `initless up` run for real as a user runs it (`node bin/initless.mjs up`), in a process group of
 * its own so that a failed test can kill it with everything it started.
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'

const ROOT = join(import.meta.dirname, '..', '..')
const CLI = join(ROOT, 'bin', 'initless.mjs')

export interface CliUp {
  readonly child: ChildProcess
  /** Its stdout and stderr so far. */
  output(): string
  /** SIGKILL to its whole process group when it still runs (for after()). */
  killGroup(): void
}

/** Spawn `initless up` with `env`; resolves once it printed "initless is up at", fails if it exits. */
export async function startCliUp(env: NodeJS.ProcessEnv, timeoutMs = 300_000): Promise<CliUp> {
  const child = spawn(process.execPath, [CLI, 'up'], {
    env,
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  })
  let text = ''
  child.stdout?.on('data', (d: Buffer) => (text += d.toString()))
  child.stderr?.on('data', (d: Buffer) => (text += d.toString()))
  const up: CliUp = {
    child,
    output: () => text,
    killGroup() {
      if (child.pid !== undefined && child.exitCode === null) process.kill(-child.pid, 'SIGKILL')
    },
  }
  const deadline = Date.now() + timeoutMs
  while (!/initless is up at /.test(text)) {
    assert.ok(child.exitCode === null, `initless up exited early:\n${text.slice(-3000)}`)
    assert.ok(Date.now() < deadline, `initless up never came up:\n${text.slice(-3000)}`)
    await new Promise((r) => setTimeout(r, 200))
  }
  return up
}
