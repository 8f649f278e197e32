/**
 * The CRIU command line: version, feature checks and the lazy-pages daemon. runc drives CRIU itself
 * for dump and restore (it finds `criu` through PATH); this adapter covers what runc does not.
 */
import { spawn } from 'node:child_process'
import { access, open, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { InitlessError } from '../shared/errors.ts'
import type { CommandRunner } from './exec.ts'

export interface LazyPagesDaemon {
  readonly pid: number
  /** Settles when the daemon exits: it does so by itself once every page has been pushed. */
  readonly exited: Promise<number | null>
}

export interface Criu {
  version(): Promise<string>
  /** Write the CRIU config file runc passes to restores (lazy or eager). */
  writeRestoreConfig(path: string, opts: { lazy: boolean }): Promise<void>
  /**
   * Start `criu lazy-pages` for one restore and resolve once its socket exists, i.e. once
   * `runc restore` may connect. One daemon serves exactly one restore.
   */
  startLazyPages(imagesDir: string, workDir: string, timeoutMs?: number): Promise<LazyPagesDaemon>
}

export function parseCriuVersion(output: string): string | undefined {
  return /Version:\s*(\d+\.\d+(?:\.\d+)?)/.exec(output)?.[1]
}

export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number)
  const pb = b.split('.').map(Number)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0)
    if (d !== 0) return Math.sign(d)
  }
  return 0
}

export function createCriu(deps: { run: CommandRunner; bin?: string }): Criu {
  const bin = deps.bin ?? 'criu'
  return {
    async version() {
      const out = await deps.run(bin, ['--version'], { timeoutMs: 10_000 })
      const v = parseCriuVersion(out.stdout)
      if (!v)
        throw new InitlessError(
          'ERR_COMMAND_FAILED',
          `cannot read the CRIU version from: ${out.stdout.trim()}`,
        )
      return v
    },

    async writeRestoreConfig(path, opts) {
      // `network-lock skip`: the instance's namespace is brand new and holds no connection, so the
      // iptables lock/unlock CRIU would otherwise run (two iptables-restore calls) buys nothing.
      const lines = ['network-lock skip']
      if (opts.lazy) lines.push('lazy-pages')
      await writeFile(path, `${lines.join('\n')}\n`, { mode: 0o600 })
    },

    async startLazyPages(imagesDir, workDir, timeoutMs = 10_000) {
      const log = await open(join(workDir, 'lazy-pages.out'), 'a')
      const child = spawn(
        bin,
        ['lazy-pages', '--images-dir', imagesDir, '--work-dir', workDir, '-o', 'lazy-pages.log', '-v2'],
        // Detached: the daemon must outlive an executor restart, or restored pages would be lost.
        { detached: true, stdio: ['ignore', log.fd, log.fd] },
      )
      await log.close()
      child.unref()
      const exited = new Promise<number | null>((resolve) => {
        child.on('exit', (code) => resolve(code))
        child.on('error', () => resolve(null))
      })
      const socket = join(workDir, 'lazy-pages.socket')
      const deadline = Date.now() + timeoutMs
      let gone = false
      void exited.then(() => (gone = true))
      // The socket appears within a few ms; poll tightly, this is on the cold-start path.
      for (;;) {
        if (
          await access(socket).then(
            () => true,
            () => false,
          )
        )
          break
        if (gone)
          throw new InitlessError(
            'ERR_RESTORE_FAILED',
            `criu lazy-pages exited before listening (see ${workDir}/lazy-pages.log)`,
          )
        if (Date.now() > deadline) {
          child.kill('SIGKILL')
          throw new InitlessError(
            'ERR_RESTORE_FAILED',
            `criu lazy-pages did not listen within ${timeoutMs} ms`,
          )
        }
        await new Promise((r) => setTimeout(r, 1))
      }
      if (child.pid === undefined)
        throw new InitlessError('ERR_RESTORE_FAILED', 'criu lazy-pages did not start')
      return { pid: child.pid, exited }
    },
  }
}
