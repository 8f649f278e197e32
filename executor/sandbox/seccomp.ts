/**
 * The system-call filter a function's instances run under, from its manifest's `security.seccomp`:
 * installed by runc when the bake boots the function (CRIU then dumps and restores it with the
 * process), given to Docker for boots. Its hash is part of the snapshot identity, so a changed
 * profile (ours or the function's file) re-bakes the snapshot.
 */
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import type { FunctionDef } from '../../shared/functions.ts'
import { canonicalJson } from '../../shared/manifest.ts'
import { isSeccompFile, readSeccompProfile, type SeccompProfileFile } from '../../shared/seccomp.ts'
import { DEFAULT_SECCOMP_PROFILE } from './seccomp-profile.ts'

export interface ResolvedSeccomp {
  /** Undefined: unconfined. */
  readonly profile: SeccompProfileFile | undefined
  /** `unconfined`, or a hash of the profile (the snapshot identity's `seccomp`). */
  readonly id: string
}

export function seccompId(profile: SeccompProfileFile | undefined): string {
  if (!profile) return 'unconfined'
  return createHash('sha256').update(canonicalJson(profile)).digest('hex').slice(0, 16)
}

/** `default` and `unconfined` without I/O; a profile file is read and validated again. */
export async function resolveSeccomp(fn: FunctionDef): Promise<ResolvedSeccomp> {
  const setting = fn.manifest.security.seccomp
  const profile = isSeccompFile(setting)
    ? await readSeccompProfile(fn.dir, setting, fn.manifestFile)
    : builtinSeccomp(setting)
  return { profile, id: seccompId(profile) }
}

/** The profile of a keyword setting; throws for a profile file (resolveSeccomp reads those). */
export function builtinSeccomp(setting: string): SeccompProfileFile | undefined {
  if (setting === 'default') return DEFAULT_SECCOMP_PROFILE
  if (setting === 'unconfined') return undefined
  throw new Error(`seccomp profile file ${setting} must be read with resolveSeccomp`)
}

/**
 * The seccomp mode of a process from /proc/<pid>/status: 0 none, 1 strict, 2 filter. Undefined
 * when the process is gone or the kernel has no seccomp.
 */
export async function readSeccompMode(pid: number): Promise<number | undefined> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
  const m = /^Seccomp:\s+(\d+)$/m.exec(status)
  return m ? Number(m[1]) : undefined
}
