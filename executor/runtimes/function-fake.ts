/**
 * A function for unit tests of the runtimes and the instance manager: an HTTP server on 127.0.0.1
 * playing the restored process (readiness answers `ready` once `isReady`), its definition, and a
 * snapshot record of it.
 */
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FunctionDef } from '../../shared/functions.ts'
import { manifestSchema, type RestorePolicy } from '../../shared/manifest.ts'
import { FAKE_IMAGE } from '../adapters/docker-fake.ts'
import type { Snapshot } from '../snapshots/snapshot-store.ts'

export { FAKE_IMAGE } from '../adapters/docker-fake.ts'

export interface FakeFunction {
  readonly port: number
  /** While false the readiness path answers 503. */
  setReady(isReady: boolean): void
  def(opts?: {
    name?: string
    policy?: RestorePolicy
    poolSize?: number
    readinessTimeout?: string
  }): FunctionDef
  close(): Promise<void>
}

export async function startFakeFunction(): Promise<FakeFunction> {
  let isReady = true
  const server: Server = createServer((_req, res) => {
    res.writeHead(isReady ? 200 : 503, { connection: 'close' }).end(isReady ? 'ready' : 'starting')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  return {
    port,
    setReady: (v) => (isReady = v),
    def: (o = {}) => {
      const name = o.name ?? 'fn'
      return {
        name,
        dir: `/functions/${name}`,
        manifestFile: `/functions/${name}/function.yaml`,
        manifest: manifestSchema.parse({
          name,
          port,
          readiness: { path: '/', expect: 'ready', timeout: o.readinessTimeout ?? '2s' },
          restore: { policy: o.policy ?? 'auto' },
          scaling: { poolSize: o.poolSize ?? 0, maxInstances: 5 },
        }),
      }
    },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  }
}

/** A snapshot record of `fn` (no files on disk: the fakes read none). */
export function fakeSnapshot(fn: string, sizeBytes: number, key = 'k1'): Snapshot {
  const dir = `/nonexistent/snapshots/${fn}/${key}`
  return {
    dir,
    imagesDir: `${dir}/images`,
    upperDir: `${dir}/upper`,
    meta: {
      fn,
      key,
      manifestHash: 'm',
      imageId: FAKE_IMAGE.id,
      criuVersion: '4.2.1',
      kernel: '6.18',
      layout: 3,
      prefetch: 0,
      seccomp: 'unconfined',
      sizeBytes,
      bakeMs: 1,
      warmupRequests: 0,
      createdAt: 1,
      port: 8080,
    },
  }
}
