/**
 * `initless invocations`, `initless redrive` and `initless purge`: asynchronous invocations through
 * the gateway's admin API (INITLESS_ADMIN_TOKEN, the gateway at INITLESS_GATEWAY_URL or
 * INITLESS_GATEWAY_HOST/PORT).
 */
import type { Command } from 'commander'
import { InitlessError } from '../shared/errors.ts'
import { gatewayUrl } from './launcher.ts'
import type { CliIo } from './progress.ts'

interface InvocationRow {
  readonly id: string
  readonly fn: string
  readonly state: string
  readonly acceptedAt: number
  readonly attempts: readonly { readonly status?: number; readonly code?: string }[]
}

/** An admin API call; a non-2xx answer throws with the problem's detail. */
export async function adminCall<T>(method: string, path: string): Promise<T> {
  const token = process.env.INITLESS_ADMIN_TOKEN
  if (!token)
    throw new InitlessError('ERR_CONFIG_INVALID', 'INITLESS_ADMIN_TOKEN is not set (the admin API needs it)')
  const res = await fetch(`${gatewayUrl(process.env)}/admin${path}`, {
    method,
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(30_000),
  })
  const body = (await res.json().catch(() => ({}))) as T & { detail?: string; code?: string }
  if (!res.ok)
    throw new Error(`${method} /admin${path}: ${res.status} ${body.code ?? ''} ${body.detail ?? ''}`.trim())
  return body
}

const lastOutcome = (r: InvocationRow) => {
  const a = r.attempts.at(-1)
  return a ? String(a.status ?? a.code ?? 'running') : '-'
}

export function registerAsyncCommands(program: Command, io: CliIo): void {
  program
    .command('invocations [fn]')
    .description('asynchronous invocations, newest first (all functions without fn)')
    .option('--state <state>', 'queued, running, succeeded, failed or dead')
    .option('-n, --limit <n>', 'at most this many', '50')
    .action(async (fn: string | undefined, opts: { state?: string; limit: string }) => {
      const query = new URLSearchParams({ limit: opts.limit })
      if (fn) query.set('fn', fn)
      if (opts.state) query.set('state', opts.state)
      const { invocations } = await adminCall<{ invocations: InvocationRow[] }>(
        'GET',
        `/invocations?${query.toString()}`,
      )
      io.print(
        invocations,
        invocations.length
          ? invocations
              .map(
                (r) =>
                  `${r.id}  ${r.state.padEnd(9)}  ${new Date(r.acceptedAt).toISOString()}  ` +
                  `attempts ${r.attempts.length}  last ${lastOutcome(r)}`,
              )
              .join('\n')
          : 'no invocations',
      )
    })

  program
    .command('redrive <target>')
    .description('put dead invocations back in the queue: one (an invocation id) or all of a function')
    .action(async (target: string) => {
      const path = target.includes('.') ? `/invocations/${target}/redrive` : `/functions/${target}/redrive`
      const { redriven } = await adminCall<{ redriven: string[] }>('POST', path)
      io.print({ redriven }, `${redriven.length} invocation(s) redriven`)
    })

  program
    .command('purge <fn>')
    .description("remove a function's invocations: dead (default), finished or queued")
    .option('--state <state>', 'dead, finished or queued', 'dead')
    .action(async (fn: string, opts: { state: string }) => {
      const { purged } = await adminCall<{ purged: number }>(
        'DELETE',
        `/functions/${fn}/invocations?state=${encodeURIComponent(opts.state)}`,
      )
      io.print({ fn, state: opts.state, purged }, `${purged} ${opts.state} invocation(s) of ${fn} purged`)
    })
}
