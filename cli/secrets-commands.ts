/**
 * `initless secrets set|list|rm|keygen`: secret values through the gateway's admin API
 * (INITLESS_GATEWAY_URL or host/port, INITLESS_ADMIN_TOKEN). A value is read from stdin or a file,
 * never from the command line, which any user on the host can read in `ps`. Bad input (an invalid
 * scope, name or value, an answer 4xx) exits with 2.
 */
import { open, readFile } from 'node:fs/promises'
import type { Command } from 'commander'
import { errorMessage, InitlessError, isInitlessError } from '../shared/errors.ts'
import { newSecretKeyText } from '../shared/secret-crypto.ts'
import {
  checkSecretRef,
  checkSecretScope,
  checkSecretValue,
  SECRET_MAX_BYTES,
  type SecretInfo,
} from '../shared/secrets.ts'
import { formatAge } from '../shared/units.ts'
import { adminCall } from './deploy-client.ts'
import { target as adminTarget } from './lifecycle-commands.ts'
import type { CliIo } from './progress.ts'

const EXIT_USAGE = 2

const target = () => adminTarget('the secrets commands')

/** Read at most one byte more than a value may have, so a larger one fails without reading it all. */
async function readLimited(stream: AsyncIterable<Buffer | string>): Promise<Buffer> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of stream) {
    const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
    chunks.push(b)
    size += b.length
    if (size > SECRET_MAX_BYTES) break
  }
  return Buffer.concat(chunks)
}

async function readValue(fromFile: string | undefined): Promise<Buffer> {
  if (fromFile !== undefined) {
    const fh = await open(fromFile, 'r').catch((err: unknown) => {
      throw new InitlessError('ERR_SECRET_VALUE_INVALID', `cannot read ${fromFile}: ${errorMessage(err)}`)
    })
    try {
      return await readLimited(fh.createReadStream())
    } finally {
      await fh.close()
    }
  }
  if (process.stdin.isTTY)
    throw new InitlessError(
      'ERR_SECRET_VALUE_INVALID',
      'pipe the value in (printf %s "$VALUE" | initless secrets set ...) or use --from-file: never on the command line',
    )
  return readLimited(process.stdin)
}

/** A client error (invalid input, a 4xx answer) exits 2 with its message; anything else as usual. */
function clientErrors<A extends unknown[]>(action: (...args: A) => Promise<void>) {
  return async (...args: A) => {
    try {
      await action(...args)
    } catch (err) {
      const status = isInitlessError(err)
        ? ((err.details as { status?: number }).status ?? err.status)
        : undefined
      if (status === undefined || status < 400 || status >= 500) throw err
      process.stderr.write(`initless: ${errorMessage(err)}\n`)
      process.exitCode = EXIT_USAGE
    }
  }
}

export function registerSecretsCommands(program: Command, io: CliIo): void {
  const secrets = program
    .command('secrets')
    .description('secret values functions read from /run/secrets/<name> (docs/security.md#secrets)')

  secrets
    .command('set <scope> <name>')
    .description(
      "set a secret from stdin or --from-file (scope: a function's name, or a shared scope); instances restored from now on read the new value",
    )
    .option('--from-file <path>', 'read the value from this file instead of stdin')
    .action(
      clientErrors(async (scope: string, name: string, opts: { fromFile?: string }) => {
        const ref = checkSecretRef(scope, name)
        const { fromFile } = opts
        const value = checkSecretValue(await readValue(fromFile))
        const r = await adminCall<{ created: boolean; encrypted: boolean }>(
          target(),
          'PUT',
          `/secrets/${ref.scope}/${ref.name}`,
          { raw: value },
          30_000,
        )
        io.print(
          { ...ref, created: r.created, encrypted: r.encrypted },
          `${ref.scope}/${ref.name} ${r.created ? 'created' : 'updated'}${r.encrypted ? '' : ' (stored unencrypted: INITLESS_SECRETS_KEY_FILE is not set on the gateway)'}`,
        )
      }),
    )

  secrets
    .command('list [scope]')
    .description('list secret names and when each was set (never values)')
    .action(
      clientErrors(async (scope?: string) => {
        if (scope !== undefined) checkSecretScope(scope)
        const q = scope === undefined ? '' : `?scope=${scope}`
        const r = await adminCall<{ secrets: SecretInfo[]; encrypted: boolean }>(
          target(),
          'GET',
          `/secrets${q}`,
          undefined,
          30_000,
        )
        const text = [
          `${'SCOPE'.padEnd(20)} ${'NAME'.padEnd(30)} UPDATED`,
          ...r.secrets.map(
            (s) => `${s.scope.padEnd(20)} ${s.name.padEnd(30)} ${formatAge(Date.now() - s.updatedAt)} ago`,
          ),
        ].join('\n')
        io.print(r, text)
      }),
    )

  secrets
    .command('rm <scope> <name>')
    .description('remove a secret (instances already running keep the file they were given)')
    .action(
      clientErrors(async (scope: string, name: string) => {
        const ref = checkSecretRef(scope, name)
        const r = await adminCall<unknown>(
          target(),
          'DELETE',
          `/secrets/${ref.scope}/${ref.name}`,
          undefined,
          30_000,
        )
        io.print(r, `${ref.scope}/${ref.name} removed`)
      }),
    )

  secrets
    .command('keygen <file>')
    .description('write a new key for INITLESS_SECRETS_KEY_FILE (mode 0600; an existing file is kept)')
    .action(
      clientErrors(async (file: string) => {
        const existing = await readFile(file).catch(() => undefined)
        if (existing)
          throw new InitlessError(
            'ERR_SECRET_VALUE_INVALID',
            `${file} exists: a new key would orphan every value`,
          )
        const fh = await open(file, 'wx', 0o600)
        try {
          await fh.writeFile(newSecretKeyText())
        } finally {
          await fh.close()
        }
        io.print({ file }, `key written to ${file}: give it to every gateway and executor`)
      }),
    )
}
