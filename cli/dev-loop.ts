/**
 * The development loop (`initless dev`): watch the functions folder and redeploy a function when
 * a file in its folder changes, one line per redeploy. Changes are debounced per function; a
 * change during a deploy queues exactly one more deploy after it.
 */
import { watch, type FSWatcher } from 'node:fs'
import { join } from 'node:path'
import { FUNCTION_NAME_RE } from '../shared/manifest.ts'

export interface DevLoopDeps {
  /** The folder holding one folder per function. */
  readonly dir: string
  /** Only these functions (all when empty). */
  readonly only: readonly string[]
  /** Deploy one function folder; resolves with the line to print. */
  readonly deploy: (fn: string, folder: string) => Promise<string>
  readonly print: (line: string) => void
  readonly debounceMs?: number
  /** Default: node:fs watch, recursive. */
  readonly watch?: (dir: string, onChange: (relativePath: string) => void) => { close(): void }
}

export interface DevLoop {
  /** Resolves when the deploys under way are done. */
  settled(): Promise<void>
  close(): void
}

function watchRecursive(dir: string, onChange: (relativePath: string) => void): FSWatcher {
  return watch(dir, { recursive: true }, (_event, file) => {
    if (file) onChange(file.toString())
  })
}

export function startDevLoop(deps: DevLoopDeps): DevLoop {
  const debounceMs = deps.debounceMs ?? 300
  const timers = new Map<string, NodeJS.Timeout>()
  const running = new Map<string, Promise<void>>()
  const again = new Set<string>()

  const run = (fn: string): Promise<void> => {
    const current = running.get(fn)
    if (current) {
      again.add(fn)
      return current
    }
    const p = (async () => {
      do {
        again.delete(fn)
        try {
          deps.print(await deps.deploy(fn, join(deps.dir, fn)))
        } catch (err) {
          deps.print(`${fn.padEnd(18)} FAILED: ${err instanceof Error ? err.message : String(err)}`)
        }
      } while (again.has(fn))
    })().finally(() => running.delete(fn))
    running.set(fn, p)
    return p
  }

  const watcher = (deps.watch ?? watchRecursive)(deps.dir, (path) => {
    const fn = path.split('/')[0] ?? ''
    if (!FUNCTION_NAME_RE.test(fn) || (deps.only.length && !deps.only.includes(fn))) return
    clearTimeout(timers.get(fn))
    timers.set(
      fn,
      setTimeout(() => {
        timers.delete(fn)
        void run(fn)
      }, debounceMs),
    )
  })

  return {
    async settled() {
      while (running.size || timers.size) {
        await Promise.all(running.values())
        if (timers.size) await new Promise((r) => setTimeout(r, debounceMs))
      }
    },
    close() {
      watcher.close()
      for (const t of timers.values()) clearTimeout(t)
      timers.clear()
    },
  }
}
