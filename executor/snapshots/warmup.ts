/**
 * Warm-up before a checkpoint: the manifest's requests, sent to the function's own address, a few
 * at a time. Every request has its own connection with `Connection: close`: a checkpoint must find
 * no TCP connection open (neither runc's path here nor Docker's uses --tcp-established).
 */
import { errorMessage } from '../../shared/errors.ts'
import type { Manifest } from '../../shared/manifest.ts'
import { httpOnce } from '../adapters/probe.ts'

/** How many warm-up requests run at once. */
export const WARMUP_PARALLELISM = 4

/** Send every warm-up step; resolves with the number of requests answered. */
export async function warmUp(manifest: Manifest, ip: string, isAlive: () => boolean): Promise<number> {
  let done = 0
  for (const step of manifest.warmup) {
    let next = 0
    const worker = async () => {
      while (next < step.count) {
        next++
        if (!isAlive()) throw new Error(`the process exited during warm-up (${step.method} ${step.path})`)
        const res = await httpOnce(ip, manifest.port, step.path, {
          method: step.method,
          headers: step.headers,
          timeoutMs: manifest.timeouts.request,
          ...(step.body === undefined ? {} : { body: step.body }),
        }).catch((err: unknown) => {
          throw new Error(`warm-up ${step.method} ${step.path} failed: ${errorMessage(err)}`)
        })
        const ok = step.expectStatus === undefined ? res.status < 500 : res.status === step.expectStatus
        if (!ok) {
          throw new Error(
            `warm-up ${step.method} ${step.path} answered HTTP ${res.status}: ${res.body.slice(0, 200)}`,
          )
        }
        done++
      }
    }
    await Promise.all(Array.from({ length: Math.min(WARMUP_PARALLELISM, step.count) }, worker))
  }
  return done
}
