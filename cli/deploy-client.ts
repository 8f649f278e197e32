/**
 * The admin API's lifecycle calls as the CLI and the launcher make them: deploy a function folder
 * (uploaded as a tar of the folder), list its versions, roll back, delete. Errors come back as
 * the gateway's problem+json, turned into an InitlessError with the same code.
 */
import { spawn } from 'node:child_process'
import type { DeployResult } from '../shared/deploy-queue.ts'
import { ERRORS, InitlessError, type ErrorCode } from '../shared/errors.ts'
import type { FunctionDef } from '../shared/functions.ts'

export interface AdminTarget {
  /** The gateway's base URL. */
  readonly url: string
  readonly token: string
}

/** A problem+json answer, with the extension members a failed deploy carries. */
export interface Problem {
  readonly code?: string
  readonly detail?: string
  readonly step?: string
  readonly cause?: string
  readonly output?: string
  readonly [key: string]: unknown
}

/** `tar -c -C dir .` into memory: the build context exactly as the folder holds it. */
export function tarFolder(dir: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const tar = spawn('tar', ['-c', '-C', dir, '.'], { stdio: ['ignore', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    let err = ''
    tar.stdout.on('data', (d: Buffer) => out.push(d))
    tar.stderr.on('data', (d: Buffer) => (err += d.toString()))
    tar.on('error', reject)
    tar.on('close', (code) =>
      code === 0
        ? resolve(Buffer.concat(out))
        : reject(new InitlessError('ERR_COMMAND_FAILED', `tar -c ${dir} exited ${code}: ${err.trim()}`)),
    )
  })
}

/** One /admin call; a non-2xx answer becomes an InitlessError carrying the problem. */
export async function adminCall<T>(
  target: AdminTarget,
  method: string,
  path: string,
  body?: { readonly json: unknown } | { readonly tar: Buffer } | { readonly raw: Buffer },
  timeoutMs = 20 * 60_000,
): Promise<T> {
  const headers: Record<string, string> = { authorization: `Bearer ${target.token}` }
  let payload: string | Buffer | undefined
  if (body && 'json' in body) {
    headers['content-type'] = 'application/json'
    payload = JSON.stringify(body.json)
  } else if (body && 'tar' in body) {
    headers['content-type'] = 'application/x-tar'
    payload = body.tar
  } else if (body) {
    headers['content-type'] = 'application/octet-stream'
    payload = body.raw
  }
  const res = await fetch(`${target.url}/admin${path}`, {
    method,
    headers,
    ...(payload === undefined ? {} : { body: payload }),
    signal: AbortSignal.timeout(timeoutMs),
  })
  const text = await res.text()
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    parsed = undefined
  }
  if (res.ok) return parsed as T
  const problem = (parsed ?? {}) as Problem
  const code: ErrorCode =
    problem.code && problem.code in ERRORS ? (problem.code as ErrorCode) : 'ERR_INTERNAL'
  throw new InitlessError(
    code,
    problem.detail ?? `${method} /admin${path}: HTTP ${res.status} ${text.slice(0, 200)}`,
    {
      details: { status: res.status, problem },
    },
  )
}

/** A deploy's answer: the result, and the declared secrets that have no value yet. */
export type DeployAnswer = DeployResult & { readonly missingSecrets?: readonly string[] }

/** Upload one function folder and wait for its deploy. */
export async function deployFunction(
  target: AdminTarget,
  fn: Pick<FunctionDef, 'name' | 'dir'>,
): Promise<DeployAnswer> {
  const tar = await tarFolder(fn.dir)
  return adminCall<DeployAnswer>(target, 'PUT', `/functions/${fn.name}`, { tar })
}

/** One line for a deploy: `hello-node  deployed 3f2a…  build 1.2 s  bake 3.4 s`. */
export function describeDeploy(r: DeployAnswer): string {
  const what =
    r.status === 'unchanged'
      ? 'unchanged (already active)'
      : r.status === 'updated'
        ? 'live settings updated (no build, no bake)'
        : r.status === 'activated'
          ? `kept version activated (was ${r.previous ?? 'none'})`
          : `deployed (was ${r.previous ?? 'none'})${r.built ? `  build ${(r.buildMs ?? 0) / 1000} s` : '  image up to date'}${r.baked ? `  bake ${(r.bakeMs ?? 0) / 1000} s` : ''}`
  const warnings = (r.missingSecrets ?? []).map(
    (s) =>
      `\n${' '.repeat(19)}warning: secret ${s} has no value: instances fail until \`initless secrets set ${s.replace('/', ' ')}\``,
  )
  return `${r.fn.padEnd(18)} ${r.version}  ${what}  ${r.ms} ms${warnings.join('')}`
}

/** A deploy failure as lines: the step, the cause and the function's last output. */
export function describeFailure(fn: string, err: unknown): string {
  const problem = (err as { details?: { problem?: Problem } }).details?.problem
  const message = err instanceof Error ? err.message : String(err)
  const lines = [`${fn.padEnd(18)} FAILED${problem?.step ? ` at ${problem.step}` : ''}: ${message}`]
  if (problem?.output) lines.push(...problem.output.split('\n').map((l) => `    | ${l}`))
  return lines.join('\n')
}
