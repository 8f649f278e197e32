/**
 * Running host commands (runc, criu, ip, mount, tar). Every external command the executor uses goes
 * through a `CommandRunner`, so tests can record or fake them and errors carry the command's output.
 */
import { spawn, type SpawnOptions } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { InitlessError } from '../../shared/errors.ts'

export interface RunOptions {
  /** Kill the command after this many ms (default 60 s). */
  readonly timeoutMs?: number
  readonly input?: string
  readonly cwd?: string
  readonly env?: NodeJS.ProcessEnv
  /** Exit codes that count as success (default [0]). */
  readonly okCodes?: readonly number[]
  /** Where the child's stdout/stderr go; default: captured. Pass a file descriptor to detach output. */
  readonly stdio?: SpawnOptions['stdio']
  /**
   * Run the command in its own process group and kill the whole group on timeout: `runc restore`
   * runs CRIU as a child that would otherwise outlive a killed runc.
   */
  readonly killGroup?: boolean
}

export interface RunResult {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
  readonly ms: number
}

export type CommandRunner = (cmd: string, args: readonly string[], options?: RunOptions) => Promise<RunResult>

const MAX_CAPTURE = 256 * 1024

/** Last `n` lines of a command's output, for error messages. */
export function tail(text: string, n = 20): string {
  const lines = text.trimEnd().split('\n')
  return lines.slice(-n).join('\n')
}

/**
 * Rethrow a failed command as ERR_COMMAND_FAILED with the last lines of the logs that explain it
 * (runc's, CRIU's) appended; a log that is missing or empty is left out.
 */
export async function failWithLogs(err: unknown, logs: readonly string[], lines = 12): Promise<never> {
  const parts: string[] = []
  for (const file of logs) {
    const text = await readFile(file, 'utf8').catch(() => '')
    if (text) parts.push(`--- ${file}\n${tail(text, lines)}`)
  }
  const msg = err instanceof Error ? err.message : String(err)
  throw new InitlessError('ERR_COMMAND_FAILED', [msg, ...parts].join('\n'), { cause: err })
}

/** The real runner: spawn without a shell, capture output, enforce the timeout. */
export const runCommand: CommandRunner = (cmd, args, options = {}) => {
  const started = performance.now()
  const timeoutMs = options.timeoutMs ?? 60_000
  return new Promise<RunResult>((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: options.stdio ?? [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      detached: options.killGroup ?? false,
    })
    let stdout = ''
    let stderr = ''
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      if (stdout.length < MAX_CAPTURE) stdout += d
    })
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < MAX_CAPTURE) stderr += d
    })
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      if (options.killGroup && child.pid !== undefined) {
        try {
          process.kill(-child.pid, 'SIGKILL')
        } catch {
          child.kill('SIGKILL')
        }
      } else child.kill('SIGKILL')
    }, timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(
        new InitlessError('ERR_COMMAND_FAILED', `${cmd}: ${err.message}`, {
          cause: err,
          details: { cmd, args },
        }),
      )
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      const ms = performance.now() - started
      const exit = code ?? (signal ? 128 : 1)
      if (timedOut) {
        reject(
          new InitlessError(
            'ERR_COMMAND_TIMEOUT',
            `${cmd} ${args.join(' ')}: timed out after ${timeoutMs} ms`,
            {
              details: { cmd, args, stderr: tail(stderr) },
            },
          ),
        )
      } else if (!(options.okCodes ?? [0]).includes(exit)) {
        const out = tail(stderr || stdout)
        reject(
          new InitlessError(
            'ERR_COMMAND_FAILED',
            `${cmd} ${args.join(' ')}: exit ${signal ?? exit}${out ? `\n${out}` : ''}`,
            { details: { cmd, args, code: exit, stderr: tail(stderr), stdout: tail(stdout) } },
          ),
        )
      } else {
        resolve({ code: exit, stdout, stderr, ms })
      }
    })
    if (options.input !== undefined) child.stdin?.end(options.input)
  })
}
