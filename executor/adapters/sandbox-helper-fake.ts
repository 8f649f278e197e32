/** A recording SandboxHelper for unit tests (as exec-fake.ts is for commands). */
import { InitlessError } from '../../shared/errors.ts'
import type { HelperRequest, SandboxHelper } from './sandbox-helper.ts'

/**
 * A helper that records every request and answers from `answer`: undefined is `ok`, an Error is
 * thrown as it is, a number is the helper's `err <errno>` answer (ERR_COMMAND_FAILED with that
 * errno, as the real client reports it). It spawns nothing: spawn() rejects.
 */
export function fakeSandboxHelper(answer?: (req: HelperRequest) => Error | number | undefined): {
  helper: SandboxHelper
  requests: HelperRequest[]
} {
  const requests: HelperRequest[] = []
  const helper: SandboxHelper = {
    async request(req) {
      requests.push(req)
      const a = answer?.(req)
      if (a instanceof Error) throw a
      if (typeof a === 'number') {
        throw new InitlessError('ERR_COMMAND_FAILED', `sandbox helper ${req.op}: errno ${a}`, {
          details: { op: req.op, args: req.args, errno: a },
        })
      }
    },
    spawn() {
      return Promise.reject(new Error('fakeSandboxHelper does not spawn processes'))
    },
    processId: () => undefined,
    close() {},
  }
  return { helper, requests }
}
