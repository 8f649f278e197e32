/**
 * Secrets: values a function reads from files under /run/secrets, set by the operator and never
 * part of an image, a snapshot or a log (docs/security.md#secrets). A secret lives in a scope: a
 * function's own (its name) or a shared one several functions list. This module holds the names,
 * limits and the store's port; shared/secret-store.ts keeps the values in Redis, sealed by
 * shared/secret-crypto.ts.
 */
import { InitlessError } from './errors.ts'

/** A secret's name is its file name under /run/secrets: no `/`, no leading dot, at most 63. */
export const SECRET_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/
/**
 * Scopes are spelled as function names (manifest.ts FUNCTION_NAME_RE, pinned by a test): a
 * function's own scope is its name.
 */
export const SECRET_SCOPE_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/
/** Largest value, bytes: keys, tokens, certificates; not a place for data. */
export const SECRET_MAX_BYTES = 32 * 1024
/** Most secrets one function may declare. */
export const MAX_SECRETS_PER_FUNCTION = 32
/** Where an instance finds its secrets, one file per name. */
export const SECRETS_MOUNT = '/run/secrets'

/** A manifest entry: `name` (the function's own scope) or `scope/name`. */
export const SECRET_REF_RE = /^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/

export interface SecretRef {
  readonly scope: string
  readonly name: string
}

export interface SecretInfo extends SecretRef {
  /** Epoch ms of the last set. */
  readonly updatedAt: number
}

export interface SecretValue extends SecretRef {
  readonly value: Buffer
}

/** The scope and name a manifest entry of function `fn` stands for. */
export function parseSecretRef(fn: string, entry: string): SecretRef {
  const slash = entry.indexOf('/')
  return slash < 0
    ? { scope: fn, name: entry }
    : { scope: entry.slice(0, slash), name: entry.slice(slash + 1) }
}

export function formatSecretRef(ref: SecretRef): string {
  return `${ref.scope}/${ref.name}`
}

/** The secrets a function declares (manifest `secrets`), resolved to their scopes. */
export function declaredSecrets(fn: string, entries: readonly string[] | undefined): SecretRef[] {
  return (entries ?? []).map((e) => parseSecretRef(fn, e))
}

/** Throws ERR_SECRET_NAME_INVALID unless `scope` is a valid scope. */
export function checkSecretScope(scope: string): string {
  if (!SECRET_SCOPE_RE.test(scope))
    throw new InitlessError(
      'ERR_SECRET_NAME_INVALID',
      `'${scope}' is not a secret scope (a function name: lowercase letters, digits and -, at most 63)`,
    )
  return scope
}

/** Throws ERR_SECRET_NAME_INVALID unless scope and name are valid. */
export function checkSecretRef(scope: string, name: string): SecretRef {
  checkSecretScope(scope)
  if (!SECRET_NAME_RE.test(name))
    throw new InitlessError(
      'ERR_SECRET_NAME_INVALID',
      `'${name}' is not a secret name (letters, digits, _ . -, not starting with . _ or -, at most 63)`,
    )
  return { scope, name }
}

/** Throws ERR_SECRET_VALUE_INVALID for an empty value, ERR_SECRET_TOO_LARGE past the limit. */
export function checkSecretValue(value: Buffer): Buffer {
  if (value.length === 0)
    throw new InitlessError('ERR_SECRET_VALUE_INVALID', 'a secret value must not be empty')
  if (value.length > SECRET_MAX_BYTES)
    throw new InitlessError(
      'ERR_SECRET_TOO_LARGE',
      `a secret value is limited to ${SECRET_MAX_BYTES} bytes (got ${value.length})`,
    )
  return value
}

/** Where secret values are kept (Redis: secret-store.ts; tests: secret-store-fake.ts). */
export interface SecretStore {
  /** Set (create or replace) a value; resolves with whether it was new. */
  set(ref: SecretRef, value: Buffer): Promise<{ readonly created: boolean; readonly updatedAt: number }>
  /** Names and update times, never values; one scope or all. */
  list(scope?: string): Promise<SecretInfo[]>
  /** Remove a value; false when there was none. */
  remove(ref: SecretRef): Promise<boolean>
  /** The values of `refs`, and the refs that have none. Throws ERR_SECRET_KEY if one cannot be opened. */
  read(refs: readonly SecretRef[]): Promise<{ values: SecretValue[]; missing: SecretRef[] }>
  /** The refs that have no value (without reading any value). */
  missing(refs: readonly SecretRef[]): Promise<SecretRef[]>
}
