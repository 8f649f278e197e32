/** A recording CommandRunner for unit tests (as shared/registry-fake.ts is for the registry). */
import type { CommandRunner, RunOptions, RunResult } from './exec.ts'

export interface Call {
  readonly cmd: string
  readonly args: readonly string[]
  readonly options: RunOptions | undefined
}

/** A CommandRunner that records calls and answers from `answer` (default: exit 0, no output). */
export function fakeRunner(answer?: (call: Call, index: number) => Partial<RunResult> | Error | undefined): {
  run: CommandRunner
  calls: Call[]
} {
  const calls: Call[] = []
  const run: CommandRunner = async (cmd, args, options) => {
    const call = { cmd, args: [...args], options }
    calls.push(call)
    const a = answer?.(call, calls.length - 1)
    if (a instanceof Error) throw a
    return { code: 0, stdout: '', stderr: '', ms: 1, ...a }
  }
  return { run, calls }
}
