/** A recording Criu for unit tests (as exec-fake.ts is for commands). */
import { spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import type { Criu, CriuRestoreRequest, LazyPagesDaemon } from './criu.ts'

export interface FakeCriu {
  readonly criu: Criu
  readonly restores: CriuRestoreRequest[]
  /** Every lazy-pages daemon started, in order: real `sleep` processes, so kills are observable. */
  readonly daemons: LazyPagesDaemon[]
  readonly configs: { path: string; lazy: boolean }[]
  /** Kill every daemon still running (call in after()). */
  cleanup(): void
}

/**
 * A CRIU whose restore writes the test process's own pid as the restored process (alive for the
 * whole test) and whose lazy-pages daemons are `sleep` processes of this test. `fail` picks the
 * calls that reject, with the error it returns.
 */
export function createFakeCriu(
  fail: {
    restore?: (req: CriuRestoreRequest) => Error | undefined
    lazyPages?: (imagesDir: string, workDir: string) => Error | undefined
  } = {},
): FakeCriu {
  const restores: CriuRestoreRequest[] = []
  const daemons: LazyPagesDaemon[] = []
  const configs: { path: string; lazy: boolean }[] = []
  const criu: Criu = {
    version: async () => '4.2.1',
    async restore(req) {
      restores.push(req)
      const err = fail.restore?.(req)
      if (err) throw err
      await writeFile(req.pidFile, `${process.pid}\n`)
      return 5
    },
    descriptors: async () => [],
    async writeRestoreConfig(path, opts) {
      configs.push({ path, lazy: opts.lazy })
    },
    async startLazyPages(imagesDir, workDir) {
      const err = fail.lazyPages?.(imagesDir, workDir)
      if (err) throw err
      const child = spawn('sleep', ['60'], { stdio: 'ignore' })
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
      const daemon = { pid: child.pid!, exited }
      daemons.push(daemon)
      return daemon
    },
  }
  return {
    criu,
    restores,
    daemons,
    configs,
    cleanup() {
      for (const d of daemons) {
        try {
          process.kill(d.pid, 'SIGKILL')
        } catch {
          // gone already
        }
      }
    },
  }
}
