/**
 * The service's settings file (`/etc/initless/initless.env`): the INITLESS_* settings of the
 * executor and the gateway, one `KEY="value"` line each. systemd reads it with `EnvironmentFile=`
 * and a POSIX shell can source it (`set -a; . FILE`): double quotes with `\`, `"`, `` ` `` and `$`
 * escaped mean the same value to both (systemd unescapes exactly the characters a shell does inside
 * double quotes, and never expands variables in an environment file).
 */
import { isAbsolute, resolve } from 'node:path'
import { executorEnvSchema } from '../../executor/config.ts'
import { gatewayEnvSchema } from '../../gateway/config.ts'
import { configInvalid } from '../../shared/config-schema.ts'

export type Settings = Readonly<Record<string, string>>

/** Every setting the executor or the gateway reads, sorted. */
export const SETTING_KEYS: readonly string[] = [
  ...new Set([...Object.keys(executorEnvSchema.shape), ...Object.keys(gatewayEnvSchema.shape)]),
].sort()

/** Settings whose relative value names a file: the service runs elsewhere than this shell. */
const PATH_KEYS = new Set(['INITLESS_FUNCTIONS_DIR', 'INITLESS_RUNC', 'INITLESS_CRIU'])

/**
 * The settings set (non-empty) in `env`, relative paths resolved against `cwd` (a bare command
 * name such as `criu` stays: it is looked up in PATH). `ignored` lists other INITLESS_* variables,
 * which no process of the service reads (the CLI's own, provisioning's, typos).
 */
export function pickSettings(
  env: Readonly<Record<string, string | undefined>>,
  cwd: string,
): { settings: Settings; ignored: string[] } {
  const settings: Record<string, string> = {}
  for (const key of SETTING_KEYS) {
    const value = env[key]
    if (value === undefined || value === '') continue
    const isPath = PATH_KEYS.has(key) && (key === 'INITLESS_FUNCTIONS_DIR' || value.includes('/'))
    settings[key] = isPath && !isAbsolute(value) ? resolve(cwd, value) : value
  }
  const ignored = Object.keys(env)
    .filter((k) => k.startsWith('INITLESS_') && !SETTING_KEYS.includes(k))
    .sort()
  return { settings, ignored }
}

const HEADER = `# initless settings for initless-executor.service and initless-gateway.service.
# Written by \`initless service install\` (mode 0600: it may hold INITLESS_ADMIN_TOKEN); kept by later
# installs unless --force. Every key and its default: docs/configuration.md. After an edit:
#   systemctl restart initless-executor initless-gateway
`

/** The file's text; a value with a line break cannot be written (ERR_CONFIG_INVALID). */
export function renderEnvFile(settings: Settings): string {
  const bad = Object.entries(settings).filter(([, v]) => /[\n\r\0]/.test(v))
  if (bad.length)
    throw configInvalid(
      bad.map(([key]) => ({ key, message: 'a line break or NUL cannot be written to the env file' })),
    )
  const lines = Object.entries(settings).map(([k, v]) => `${k}="${v.replace(/["\\`$]/g, '\\$&')}"`)
  return `${HEADER}${lines.join('\n')}${lines.length ? '\n' : ''}`
}

/**
 * Parse an environment file in the forms a shell and systemd read alike: `KEY=value` (optionally
 * `export`ed) with a plain value (letters, digits, `_ . / : , @ % + = -`), `'single'` quoted, or
 * `"double"` quoted with `\`, `"`, `` ` `` and `$` escaped; `#` comment lines. Anything else
 * (spaces, `$` or `~` a shell would expand) is reported with its line number: the service's units
 * and the commands printed for hosts without systemd must see the same value.
 */
export function parseEnvFile(text: string, file: string): Settings {
  const out: Record<string, string> = {}
  const problems: { key: string; message: string }[] = []
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim()
    if (!line || line.startsWith('#')) return
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line)
    const value = m ? unquote(m[2]!) : undefined
    // Values are never echoed: the file may hold the admin token.
    if (!m) problems.push({ key: `${file}:${i + 1}`, message: 'expected KEY=value' })
    else if (value === undefined)
      problems.push({
        key: `${file}:${i + 1}`,
        message: `${m[1]}: write the value plain (letters, digits, _ . / : , @ % + = -), 'single' quoted, or "double" quoted with \\ " \` $ escaped`,
      })
    else out[m[1]!] = value
  })
  if (problems.length) throw configInvalid(problems)
  return out
}

function unquote(s: string): string | undefined {
  if (/^[A-Za-z0-9_./:,@%+=-]*$/.test(s)) return s
  const single = /^'([^']*)'$/.exec(s)
  if (single) return single[1]
  const double = /^"((?:[^"\\`$]|\\.)*)"$/.exec(s)
  return double?.[1]!.replace(/\\(.)/g, (all, c: string) => ('"\\`$'.includes(c) ? c : all))
}

/** The settings with secrets hidden, for printing: the admin token, a password in a Redis URL. */
export function redactSettings(settings: Settings): Settings {
  const out = { ...settings }
  if (out.INITLESS_ADMIN_TOKEN) out.INITLESS_ADMIN_TOKEN = '<redacted>'
  for (const key of ['INITLESS_REDIS_URL', 'INITLESS_ASYNC_REDIS_URL']) {
    const url = out[key]
    if (url && URL.canParse(url)) {
      const u = new URL(url)
      if (u.password) {
        u.password = 'redacted'
        out[key] = u.href
      }
    }
  }
  return out
}
