/**
 * A function's system-call filter setting (`security.seccomp` in its manifest) and the profile
 * files a function may bring: the OCI runtime spec's `linux.seccomp`, in the JSON Docker's
 * `--security-opt seccomp=<file>` takes, without Docker's conditional rules (runc has no
 * `includes`/`excludes`/`archMap`). Validated when functions load, so a bad file is reported
 * with the function before anything is built.
 */
import { readFile, realpath } from 'node:fs/promises'
import { join, relative, sep } from 'node:path'
import { z } from 'zod'
import { InitlessError } from './errors.ts'

/** `default`: initless's profile (executor/sandbox/seccomp-profile.ts); `unconfined`: no filter. */
export const SECCOMP_KEYWORDS = ['default', 'unconfined'] as const

/** A relative path to a `.json` file inside the function's folder: no `..` segment, no leading `/`. */
const PROFILE_FILE_RE = /^(?!\/)(?!(?:.*\/)?\.\.(?:\/|$))[A-Za-z0-9._/-]+\.json$/

export const seccompSetting = z
  .string()
  .refine((v) => (SECCOMP_KEYWORDS as readonly string[]).includes(v) || PROFILE_FILE_RE.test(v), {
    message:
      "expected 'default', 'unconfined' or a .json profile file in the function's folder (a relative path without '..')",
  })

export function isSeccompFile(setting: string): boolean {
  return !(SECCOMP_KEYWORDS as readonly string[]).includes(setting)
}

const ACTIONS = [
  'SCMP_ACT_KILL',
  'SCMP_ACT_KILL_PROCESS',
  'SCMP_ACT_KILL_THREAD',
  'SCMP_ACT_TRAP',
  'SCMP_ACT_ERRNO',
  'SCMP_ACT_TRACE',
  'SCMP_ACT_ALLOW',
  'SCMP_ACT_LOG',
] as const
const OPERATORS = [
  'SCMP_CMP_NE',
  'SCMP_CMP_LT',
  'SCMP_CMP_LE',
  'SCMP_CMP_EQ',
  'SCMP_CMP_GE',
  'SCMP_CMP_GT',
  'SCMP_CMP_MASKED_EQ',
] as const
const u64 = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)
const errno = z.number().int().min(1).max(4095)

export const seccompProfileSchema = z
  .object({
    defaultAction: z.enum(ACTIONS),
    defaultErrnoRet: errno.optional(),
    architectures: z
      .array(z.string().regex(/^SCMP_ARCH_[A-Z0-9_]+$/, 'expected an SCMP_ARCH_* name'))
      .optional(),
    flags: z.array(z.enum(['SECCOMP_FILTER_FLAG_LOG', 'SECCOMP_FILTER_FLAG_SPEC_ALLOW'])).optional(),
    syscalls: z
      .array(
        z
          .object({
            names: z.array(z.string().regex(/^[a-z_][a-z0-9_]*$/, 'expected a system call name')).min(1),
            action: z.enum(ACTIONS),
            errnoRet: errno.optional(),
            args: z
              .array(
                z
                  .object({
                    index: z.number().int().min(0).max(5),
                    value: u64,
                    valueTwo: u64.optional(),
                    op: z.enum(OPERATORS),
                  })
                  .strict(),
              )
              .max(6)
              .optional(),
            comment: z.string().optional(),
          })
          .strict(),
      )
      .max(1000)
      .default([]),
  })
  .strict()

export type SeccompProfileFile = z.infer<typeof seccompProfileSchema>

const MAX_PROFILE_BYTES = 1024 * 1024

function profileError(manifestFile: string, message: string): InitlessError {
  return new InitlessError(
    'ERR_MANIFEST_INVALID',
    `${manifestFile}: invalid manifest\n  security.seccomp: ${message}`,
    {
      details: { file: manifestFile, problems: [{ field: 'security.seccomp', message }] },
    },
  )
}

/**
 * Read and validate a function's profile file `setting` (relative to `fnDir`). Throws
 * ERR_MANIFEST_INVALID naming the manifest, the field and what is wrong (missing, outside the
 * folder through a link, not JSON, not a profile).
 */
export async function readSeccompProfile(
  fnDir: string,
  setting: string,
  manifestFile: string,
): Promise<SeccompProfileFile> {
  const path = join(fnDir, setting)
  let real: string
  try {
    real = await realpath(path)
  } catch {
    throw profileError(manifestFile, `profile file ${setting} not found in ${fnDir}`)
  }
  const rel = relative(await realpath(fnDir), real)
  if (rel.startsWith(`..${sep}`) || rel === '..')
    throw profileError(manifestFile, `profile file ${setting} leads outside the function's folder`)
  const text = await readFile(real, 'utf8').catch((err: unknown) => {
    throw profileError(manifestFile, `profile file ${setting} is unreadable: ${String(err)}`)
  })
  if (text.length > MAX_PROFILE_BYTES)
    throw profileError(manifestFile, `profile file ${setting} is larger than 1 MiB`)
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err) {
    throw profileError(manifestFile, `profile file ${setting} is not JSON: ${(err as Error).message}`)
  }
  const parsed = seccompProfileSchema.safeParse(raw)
  if (!parsed.success) {
    const issues = parsed.error.issues.slice(0, 5).map((i) => {
      const at = i.path.length ? i.path.join('.') : '(profile)'
      const what =
        i.code === z.ZodIssueCode.unrecognized_keys
          ? `unknown field(s) ${i.keys.map((k) => `'${k}'`).join(', ')} (Docker's conditional rules are not supported: list calls unconditionally)`
          : i.message
      return `${at}: ${what}`
    })
    throw profileError(manifestFile, `profile file ${setting} is not a seccomp profile: ${issues.join('; ')}`)
  }
  return parsed.data
}
