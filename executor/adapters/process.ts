/**
 * Host process helpers. Restored and started instances are not our children (runc detaches them),
 * so liveness is read from /proc: a zombie counts as dead, since nobody may ever reap it.
 */
import { readFileSync } from 'node:fs'
import { readdir, readFile, readlink } from 'node:fs/promises'

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

/**
 * Whether process `pid` holds a listening unix socket bound to `name` (as bound: CRIU binds its
 * sockets relative to its work dir). A socket's file appears at bind(), before listen(): a client
 * connecting in between is refused, so its file's existence is no sign that anyone listens.
 */
export async function listensOnUnixSocket(pid: number, name: string): Promise<boolean> {
  const inodes = new Set<string>()
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])
  for (const fd of fds) {
    const m = /^socket:\[(\d+)\]$/.exec(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => ''))
    if (m) inodes.add(m[1]!)
  }
  if (!inodes.size) return false
  const table = await readFile(`/proc/${pid}/net/unix`, 'utf8').catch(() => '')
  return [...listeningUnixInodes(table, name)].some((inode) => inodes.has(inode))
}

/**
 * The socket inodes that /proc/<pid>/net/unix (`table`) shows listening on `name`. Columns: Num
 * RefCount Protocol Flags Type St Inode Path; Flags has __SO_ACCEPTCON (0x10000) once listening.
 */
export function listeningUnixInodes(table: string, name: string): Set<string> {
  const found = new Set<string>()
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/)
    if (f[7] === name && (parseInt(f[3] ?? '0', 16) & 0x10000) !== 0) found.add(f[6]!)
  }
  return found
}
