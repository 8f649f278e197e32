/**
 * Per-name re-reads for in-process copies that follow Redis by events (the function watcher, the
 * gateway's key cache): a read that starts while one runs for the same name does not start
 * another; it makes the running one read once more when it is done (once, however many arrive), so
 * the last event is always followed by a whole read. Failures go to `onError`; the copy keeps what
 * it had.
 */
export interface CoalescedReads {
  /** Read `name` again; resolves once a read that started after this call was applied. */
  readonly read: (name: string) => Promise<void>
  /** Whether a read of `name` is under way (a full re-read must not overwrite its result). */
  readonly isReading: (name: string) => boolean
}

export function createCoalescedReads(
  readAndApply: (name: string) => Promise<void>,
  onError: (name: string, err: unknown) => void,
): CoalescedReads {
  const reading = new Map<string, { again: boolean; done: Promise<void> }>()
  return {
    read: (name) => {
      const running = reading.get(name)
      if (running) {
        running.again = true
        return running.done
      }
      const state = { again: false, done: Promise.resolve() }
      reading.set(name, state)
      state.done = (async () => {
        try {
          do {
            state.again = false
            await readAndApply(name)
          } while (state.again)
        } catch (err) {
          onError(name, err)
        } finally {
          reading.delete(name)
        }
      })()
      return state.done
    },
    isReading: (name) => reading.has(name),
  }
}
