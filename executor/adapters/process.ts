/**
 * Host process helpers. Restored and started instances are not our children (runc detaches them),
 * so liveness is read from /proc: a zombie counts as dead, since nobody may ever reap it.
 */
import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'

export function isProcessAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Field 3 (after the parenthesised command, which may itself contain spaces) is the state.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    return false
  }
}

export async function readPidFile(path: string): Promise<number> {
  const text = await readFile(path, 'utf8')
  const pid = Number.parseInt(text.trim(), 10)
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`pid file ${path} holds no pid: '${text.trim()}'`)
  return pid
}

/** Command line of a process as its argv, or undefined when it is gone. */
export async function processArgv(pid: number): Promise<string[] | undefined> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8')
    return raw.split('\0').filter(Boolean)
  } catch {
    return undefined
  }
}

/**
 * Is this the command line of CRIU at work for something under `dir`: a restore or a lazy-pages
 * daemon naming a path there (what an executor that died may leave running)?
 */
export function isCriuWorkUnder(argv: readonly string[], dir: string): boolean {
  const criu = argv.includes('lazy-pages') || argv.includes('restore')
  return criu && argv.some((a) => a.startsWith(dir))
}
