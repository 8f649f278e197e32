/**
 * How the CLI reports long steps: one line per finished step with its duration, a spinner with the
 * step's latest activity while it runs (terminals only), and the step's raw output (docker build,
 * bake messages) only with `-v`. A failed step's error carries its last output lines itself
 * (ERR_IMAGE_BUILD_FAILED, ERR_BAKE_*), so nothing is lost without `-v`.
 */
export interface CliIo {
  print(data: unknown, text: string): void
  /** A finished step's line (stderr; silent with --quiet/--json). */
  progress(line: string): void
  /** Raw output of a running step: shown with -v, dropped otherwise. */
  detail(line: string): void
  /** What a running step is doing now (a spinner line on a terminal); undefined clears it. */
  activity(text: string | undefined): void
}

export interface ProgressOptions {
  readonly json: boolean
  readonly quiet: boolean
  readonly verbose: boolean
  /** Where lines go: stderr in the CLI. */
  readonly write: (text: string) => void
  /** A terminal gets the spinner; a pipe or a file only whole lines. */
  readonly isTty: boolean
  /** The terminal's width: the spinner line is cut to it. */
  readonly columns?: number
  readonly intervalMs?: number
}

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏']

/** The CLI's progress lanes (everything but `print`), writing to one stream. */
export function createProgress(opts: ProgressOptions): Omit<CliIo, 'print'> & { close(): void } {
  const silent = opts.json || opts.quiet
  let text: string | undefined
  let frame = 0
  let timer: NodeJS.Timeout | undefined
  let started = 0
  const clear = () => {
    if (timer) opts.write('\r\x1b[K')
  }
  const draw = () => {
    const secs = Math.floor((performance.now() - started) / 1000)
    // One terminal line: a long activity is cut rather than wrapped (a wrapped line is not erased).
    const line = `${FRAMES[frame++ % FRAMES.length]} ${text ?? ''} (${secs} s)`
    opts.write(`\r\x1b[K${line.slice(0, (opts.columns || 100) - 1)}`)
  }
  const stop = () => {
    clear()
    if (timer) clearInterval(timer)
    timer = undefined
  }
  return {
    progress(line) {
      if (silent) return
      clear()
      opts.write(`${line}\n`)
      if (timer) draw()
    },
    detail(line) {
      if (silent || !opts.verbose) return
      clear()
      opts.write(`${line}\n`)
      if (timer) draw()
    },
    activity(next) {
      if (silent || opts.verbose || !opts.isTty) return
      if (next === undefined) return stop()
      if (!timer) {
        started = performance.now()
        timer = setInterval(draw, opts.intervalMs ?? 100)
        timer.unref()
      }
      text = next
      draw()
    },
    close: stop,
  }
}

/** `1.2 s` under a minute, `3 min 4 s` above. */
export function formatDuration(ms: number): string {
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`
  const s = Math.round(ms / 1000)
  return `${Math.floor(s / 60)} min ${s % 60} s`
}
