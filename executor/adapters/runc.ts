/**
 * The runc command line, the only place that knows its flags. Containers live under a runc root of
 * initless's own (default /run/initless/runc), apart from Docker's, so reconciliation can list
 * exactly ours.
 */
import { join } from 'node:path'
import { failWithLogs, type CommandRunner } from './exec.ts'

export interface ContainerState {
  readonly id: string
  /** created, running, paused or stopped. */
  readonly status: string
  readonly pid: number
  readonly bundle: string
}

export interface StdioFds {
  /** File descriptors handed to the container as stdin, stdout, stderr. */
  readonly stdin: number | 'ignore' | 'pipe'
  readonly stdout: number | 'pipe'
  readonly stderr: number | 'pipe'
}

export interface RestoreOptions {
  readonly bundle: string
  readonly imagePath: string
  readonly workPath: string
  readonly stdio: StdioFds
  readonly pidFile: string
  /** A restore still running after this is killed with its CRIU (default 30 s). */
  readonly timeoutMs?: number
}

export interface Runc {
  /**
   * `runc run -d`: returns once the container's process runs. Its stdout and stderr go to
   * `outputFile` through an anonymous pipe (see below).
   */
  run(id: string, opts: { bundle: string; outputFile: string; pidFile: string }): Promise<void>
  /** `runc checkpoint`: dumps the container to `imagePath` and kills it. */
  checkpoint(id: string, opts: { imagePath: string; workPath: string }): Promise<void>
  /** `runc restore -d`: returns once CRIU has restored the process (lazily or not). */
  restore(id: string, opts: RestoreOptions): Promise<void>
  kill(id: string, signal?: string): Promise<void>
  /** `runc delete --force`; a container that does not exist is not an error. */
  delete(id: string): Promise<void>
  state(id: string): Promise<ContainerState | undefined>
  list(): Promise<ContainerState[]>
}

export function createRunc(deps: { run: CommandRunner; root: string; bin?: string }): Runc {
  const bin = deps.bin ?? 'runc'
  const base = ['--root', deps.root]
  const logArgs = (workPath: string) => ['--log', join(workPath, 'runc.log'), '--log-format', 'text']

  /** runc's own log and CRIU's log explain most failures: attach their last lines. */
  const explain = (err: unknown, workPath: string, criuLog?: string): Promise<never> =>
    failWithLogs(err, [join(workPath, 'runc.log'), ...(criuLog ? [join(workPath, criuLog)] : [])])

  return {
    async run(id, opts) {
      // A process that will be checkpointed may hold only stdio CRIU can re-create: a file outside
      // the container's mounts cannot be dumped, a socketpair (what Node gives children) is an
      // external socket. An anonymous pipe can: runc records it and, on restore, hands the
      // restored process runc's own stdio instead. bash's process substitution makes that pipe,
      // with `cat` appending to the output file for as long as the container writes.
      const script = 'log=$1; shift; exec > >(exec cat >>"$log" 2>/dev/null) 2>&1 </dev/null; exec "$@"'
      await deps
        .run(
          'bash',
          [
            '-c',
            script,
            'runc-run',
            opts.outputFile,
            bin,
            ...base,
            ...logArgs(opts.bundle),
            'run',
            '-d',
            '--bundle',
            opts.bundle,
            '--pid-file',
            opts.pidFile,
            id,
          ],
          { timeoutMs: 30_000 },
        )
        .catch((err: unknown) => explain(err, opts.bundle))
    },

    async checkpoint(id, opts) {
      await deps
        .run(
          bin,
          [
            ...base,
            ...logArgs(opts.workPath),
            'checkpoint',
            '--image-path',
            opts.imagePath,
            '--work-path',
            opts.workPath,
            id,
          ],
          {
            timeoutMs: 300_000,
          },
        )
        .catch((err: unknown) => explain(err, opts.workPath, 'dump.log'))
    },

    async restore(id, opts) {
      await deps
        .run(
          bin,
          [
            ...base,
            ...logArgs(opts.workPath),
            'restore',
            '-d',
            '--image-path',
            opts.imagePath,
            '--work-path',
            opts.workPath,
            '--bundle',
            opts.bundle,
            '--pid-file',
            opts.pidFile,
            id,
          ],
          {
            stdio: [opts.stdio.stdin, opts.stdio.stdout, opts.stdio.stderr],
            timeoutMs: opts.timeoutMs ?? 30_000,
            killGroup: true,
          },
        )
        .catch((err: unknown) => explain(err, opts.workPath, 'restore.log'))
    },

    async kill(id, signal = 'KILL') {
      await deps.run(bin, [...base, 'kill', id, signal], { okCodes: [0, 1] })
    },

    async delete(id) {
      await deps.run(bin, [...base, 'delete', '--force', id], { okCodes: [0, 1] })
    },

    async state(id) {
      const out = await deps.run(bin, [...base, 'state', id], { okCodes: [0, 1] })
      if (out.code !== 0) return undefined
      const s = JSON.parse(out.stdout) as { id: string; status: string; pid: number; bundle: string }
      return { id: s.id, status: s.status, pid: s.pid, bundle: s.bundle }
    },

    async list() {
      const out = await deps.run(bin, [...base, 'list', '--format', 'json'])
      const parsed = JSON.parse(out.stdout || 'null') as ContainerState[] | null
      return (parsed ?? []).map((s) => ({ id: s.id, status: s.status, pid: s.pid, bundle: s.bundle }))
    },
  }
}
