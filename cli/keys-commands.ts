/**
 * `initless keys create|list|revoke`: a function's invocation keys through the gateway's admin
 * API (docs/security.md). `create` prints the key on stdout, once: nothing else ever shows it.
 */
import { InvalidArgumentError, type Command } from 'commander'
import { API_KEY_ID_RE, MAX_KEY_NAME, type ApiKeyInfo } from '../shared/api-keys.ts'
import { FUNCTION_NAME_RE } from '../shared/manifest.ts'
import { adminCall } from './deploy-client.ts'
import { target } from './lifecycle-commands.ts'
import type { CliIo } from './progress.ts'

interface CreatedKey extends ApiKeyInfo {
  readonly key: string
  readonly auth: string
}

function fnArg(value: string): string {
  if (!FUNCTION_NAME_RE.test(value))
    throw new InvalidArgumentError('expected a function name (lowercase letters, digits and -)')
  return value
}

function idArg(value: string): string {
  if (!API_KEY_ID_RE.test(value))
    throw new InvalidArgumentError('expected a key id: 12 hex digits (keys list)')
  return value
}

function labelArg(value: string): string {
  if (!/^[\x20-\x7e]+$/.test(value) || value.length > MAX_KEY_NAME)
    throw new InvalidArgumentError(`expected 1 to ${MAX_KEY_NAME} printable ASCII characters`)
  return value
}

const timeOf = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z')

export function registerKeyCommands(program: Command, io: CliIo): void {
  const keys = program
    .command('keys')
    .description("a function's invocation keys (manifest auth: { type: key })")

  keys
    .command('create')
    .description('create a key; it is printed once, only its hash is kept')
    .argument('<fn>', 'function name', fnArg)
    .option('--name <label>', 'a label to tell keys apart in keys list', labelArg)
    .action(async (fn: string, opts: { name?: string }) => {
      const created = await adminCall<CreatedKey>(target(), 'POST', `/functions/${fn}/keys`, {
        json: opts.name ? { name: opts.name } : {},
      })
      if (created.auth !== 'key')
        io.progress(`note: ${fn} has auth.type ${created.auth}: the key is not needed until it is key`)
      io.progress(`key ${created.id} of ${fn}: shown once, store it now`)
      io.print(created, created.key)
    })

  keys
    .command('list')
    .description("a function's keys: ids, labels, creation times (never the keys)")
    .argument('<fn>', 'function name', fnArg)
    .action(async (fn: string) => {
      const r = await adminCall<{ fn: string; auth: string | null; keys: ApiKeyInfo[] }>(
        target(),
        'GET',
        `/functions/${fn}/keys`,
      )
      const text = r.keys.length
        ? [
            `${'ID'.padEnd(12)}  ${'CREATED'.padEnd(20)}  NAME`,
            ...r.keys.map((k) => `${k.id}  ${timeOf(k.createdAt).padEnd(20)}  ${k.name ?? ''}`),
          ].join('\n')
        : `${fn} has no keys`
      io.print(r, text)
    })

  keys
    .command('revoke')
    .description('revoke a key: every gateway refuses it within a second')
    .argument('<fn>', 'function name', fnArg)
    .argument('<id>', 'key id (keys list)', idArg)
    .action(async (fn: string, id: string) => {
      const r = await adminCall<{ fn: string; id: string; revoked: boolean }>(
        target(),
        'DELETE',
        `/functions/${fn}/keys/${id}`,
      )
      io.print(r, `key ${id} of ${fn} revoked`)
    })
}
