/**
 * One executor per state dir. At start an executor reconciles its state dir: it kills every CRIU
 * process working under it and removes every sandbox cgroup, mount and namespace it finds there.
 * A second executor started on a dir in use (a second unit, a restart before the old process
 * ended, a mistyped INITLESS_STATE_DIR) would tear down the first one's instances, and kill the
 * lazy-pages daemons their memory still comes from. So the executor takes this lock first.
 *
 * The lock is an abstract unix socket named after the state dir's real path: the kernel frees it
 * when its holder exits, however it exits (no stale lock file to judge), and it holds across PID
 * namespaces. Abstract names belong to a network namespace; every executor runs in the host's,
 * where its bridge is. Function code never does (each instance has its own namespace), so it can
 * neither take nor answer for the lock; a process on the host itself could, as it could signal the
 * executor. The holder answers each connection with who it is, for the refusal.
 */
import { createHash } from 'node:crypto'
import { mkdir, realpath } from 'node:fs/promises'
import { createConnection, createServer, type Server } from 'node:net'
import { InitlessError } from '../../shared/errors.ts'

export interface LockHolder {
  readonly pid: number
  readonly hostId: string
  /** ISO time the holder took the lock. */
  readonly since: string
}

export interface StateDirLock {
  /** The socket name (abstract: starts with a NUL byte). */
  readonly name: string
  release(): Promise<void>
}

/** The abstract socket name for a state dir (its real path hashed: names are at most 107 bytes). */
export function lockName(realStateDir: string): string {
  const hash = createHash('sha256').update(realStateDir).digest('hex').slice(0, 32)
  return `\0initless-executor-${hash}`
}

/** Who holds the lock, as its holder says; undefined when it does not answer within `timeoutMs`. */
export function askHolder(name: string, timeoutMs = 1000): Promise<LockHolder | undefined> {
  return new Promise((resolve) => {
    let text = ''
    const socket = createConnection(name)
    const done = (holder: LockHolder | undefined) => {
      clearTimeout(timer)
      socket.destroy()
      resolve(holder)
    }
    const timer = setTimeout(() => done(undefined), timeoutMs)
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => (text += chunk))
    socket.on('error', () => done(undefined))
    socket.on('end', () => {
      try {
        const v = JSON.parse(text) as Partial<LockHolder>
        done(
          typeof v.pid === 'number' && typeof v.hostId === 'string' && typeof v.since === 'string'
            ? { pid: v.pid, hostId: v.hostId, since: v.since }
            : undefined,
        )
      } catch {
        done(undefined)
      }
    })
  })
}

function listen(server: Server, name: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(name, () => {
      server.off('error', reject)
      resolve()
    })
  })
}

/**
 * Take the state dir's lock for this process, or fail with ERR_STATE_DIR_IN_USE naming the
 * executor that holds it. The lock never keeps the process alive; `release` (or exiting) frees it.
 */
export async function lockStateDir(stateDir: string, me: { readonly hostId: string }): Promise<StateDirLock> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 })
  const real = await realpath(stateDir)
  const name = lockName(real)
  const holder: LockHolder = { pid: process.pid, hostId: me.hostId, since: new Date().toISOString() }
  const server = createServer((socket) => {
    socket.on('error', () => socket.destroy())
    socket.end(JSON.stringify(holder))
  })
  try {
    await listen(server, name)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
    const other = await askHolder(name)
    const who = other
      ? `pid ${other.pid}, host id ${other.hostId}, since ${other.since}`
      : 'it did not say who it is'
    throw new InitlessError(
      'ERR_STATE_DIR_IN_USE',
      `state dir ${real} is in use by another executor (${who}); stop it first, or give this one its own INITLESS_STATE_DIR`,
      { details: { stateDir: real, ...(other ? { holder: other } : {}) } },
    )
  }
  server.unref()
  let released: Promise<void> | undefined
  return {
    name,
    release: () =>
      (released ??= new Promise<void>((resolve) => {
        server.close(() => resolve())
      })),
  }
}
