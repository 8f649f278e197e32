/**
 * Sealing secret values at rest: AES-256-GCM under a key from INITLESS_SECRETS_KEY_FILE, with the
 * secret's scope and name as additional data, so a sealed value copied to another name in Redis
 * does not open. Without a key, values are stored as they are (`alg: none`), and the processes
 * warn at start (docs/security.md#secrets says what Redis access then reveals).
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { InitlessError } from './errors.ts'
import { formatSecretRef, type SecretRef } from './secrets.ts'

export const SECRET_KEY_BYTES = 32
const IV_BYTES = 12

/** A value as stored. */
export type SealedValue =
  | { readonly alg: 'aes-256-gcm'; readonly iv: string; readonly tag: string; readonly data: string }
  | { readonly alg: 'none'; readonly data: string }

export interface SecretSealer {
  /** Whether values are encrypted (a key was given). */
  readonly encrypts: boolean
  seal(ref: SecretRef, value: Buffer): SealedValue
  /** Throws ERR_SECRET_KEY when the value cannot be opened with this sealer's key. */
  open(ref: SecretRef, sealed: SealedValue): Buffer
}

/**
 * The key file's content: 32 bytes written as 64 hex digits or as base64 (surrounding whitespace
 * ignored), as `openssl rand -hex 32` or `initless secrets keygen` write it.
 */
export function parseSecretKey(text: string, file: string): Buffer {
  const t = text.trim()
  const key = /^[0-9a-fA-F]{64}$/.test(t)
    ? Buffer.from(t, 'hex')
    : /^[A-Za-z0-9+/]{43}=$/.test(t)
      ? Buffer.from(t, 'base64')
      : undefined
  if (key?.length !== SECRET_KEY_BYTES)
    throw new InitlessError(
      'ERR_CONFIG_INVALID',
      `${file}: expected a ${SECRET_KEY_BYTES}-byte key as 64 hex digits or base64 (openssl rand -hex 32)`,
    )
  return key
}

/** A new key file's content. */
export function newSecretKeyText(): string {
  return `${randomBytes(SECRET_KEY_BYTES).toString('hex')}\n`
}

const cannotOpen = (ref: SecretRef, why: string) =>
  new InitlessError('ERR_SECRET_KEY', `secret ${formatSecretRef(ref)} cannot be opened: ${why}`)

export function createSecretSealer(key: Buffer | undefined): SecretSealer {
  return {
    encrypts: key !== undefined,
    seal(ref, value) {
      if (!key) return { alg: 'none', data: value.toString('base64') }
      const iv = randomBytes(IV_BYTES)
      const cipher = createCipheriv('aes-256-gcm', key, iv)
      cipher.setAAD(Buffer.from(formatSecretRef(ref)))
      const data = Buffer.concat([cipher.update(value), cipher.final()])
      return {
        alg: 'aes-256-gcm',
        iv: iv.toString('base64'),
        tag: cipher.getAuthTag().toString('base64'),
        data: data.toString('base64'),
      }
    },
    open(ref, sealed) {
      if (sealed.alg === 'none') return Buffer.from(sealed.data, 'base64')
      if (!key) throw cannotOpen(ref, 'it is encrypted and INITLESS_SECRETS_KEY_FILE is not set')
      try {
        const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(sealed.iv, 'base64'))
        decipher.setAAD(Buffer.from(formatSecretRef(ref)))
        decipher.setAuthTag(Buffer.from(sealed.tag, 'base64'))
        return Buffer.concat([decipher.update(Buffer.from(sealed.data, 'base64')), decipher.final()])
      } catch {
        throw cannotOpen(ref, 'wrong key (INITLESS_SECRETS_KEY_FILE differs from the one it was set with)')
      }
    },
  }
}

/**
 * The sealer of a process: from the key file when one is configured. A key file others may read
 * is refused (as ssh refuses such a private key): the key is what keeps Redis from revealing values.
 */
export async function loadSecretSealer(keyFile: string | undefined): Promise<SecretSealer> {
  if (!keyFile) return createSecretSealer(undefined)
  const { readFile, stat } = await import('node:fs/promises')
  const st = await stat(keyFile).catch((err: unknown) => {
    throw new InitlessError('ERR_CONFIG_INVALID', `INITLESS_SECRETS_KEY_FILE ${keyFile}: ${String(err)}`)
  })
  if ((st.mode & 0o077) !== 0)
    throw new InitlessError(
      'ERR_CONFIG_INVALID',
      `INITLESS_SECRETS_KEY_FILE ${keyFile} is readable by others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it`,
    )
  return createSecretSealer(parseSecretKey(await readFile(keyFile, 'utf8'), keyFile))
}
