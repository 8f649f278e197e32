/** A recording Runc for unit tests (as exec-fake.ts is for commands). */
import { writeFile } from 'node:fs/promises'
import type { ContainerState, Runc } from './runc.ts'

export type RuncOp = 'run' | 'checkpoint' | 'restore' | 'kill' | 'delete'

export interface FakeRunc {
  readonly runc: Runc
  readonly calls: { op: RuncOp; id: string }[]
  /** Containers run or restored and not deleted. */
  readonly containers: Map<string, ContainerState>
}

/**
 * A runc whose run and restore write the test process's own pid as the container's process.
 * `fail` returns the error an operation on a container rejects with (undefined: it succeeds).
 */
export function createFakeRunc(
  fail: (op: RuncOp, id: string) => Error | undefined = () => undefined,
): FakeRunc {
  const calls: { op: RuncOp; id: string }[] = []
  const containers = new Map<string, ContainerState>()
  const call = (op: RuncOp, id: string) => {
    calls.push({ op, id })
    const err = fail(op, id)
    if (err) throw err
  }
  const started = async (id: string, bundle: string, pidFile: string) => {
    await writeFile(pidFile, `${process.pid}\n`)
    containers.set(id, { id, status: 'running', pid: process.pid, bundle })
  }
  const runc: Runc = {
    async run(id, opts) {
      call('run', id)
      await started(id, opts.bundle, opts.pidFile)
    },
    async checkpoint(id) {
      call('checkpoint', id)
      containers.delete(id)
    },
    async restore(id, opts) {
      call('restore', id)
      await started(id, opts.bundle, opts.pidFile)
    },
    async kill(id) {
      call('kill', id)
    },
    async delete(id) {
      call('delete', id)
      containers.delete(id)
    },
    state: async (id) => containers.get(id),
    list: async () => [...containers.values()],
  }
  return { runc, calls, containers }
}
