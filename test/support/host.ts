/**
 * A real host (Docker, runc, CRIU) wired for tests, with a private state dir so snapshots are baked
 * from scratch, and helpers to start instances through the real runtimes.
 */
import { randomBytes } from 'node:crypto'
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { loadExecutorConfig, type ExecutorConfig } from '../../executor/config.ts'
import type { ImageConfig } from '../../executor/adapters/docker.ts'
import { createHost, type Host, type HostRuntimes } from '../../executor/host.ts'
import { prepareRestoreSandbox, releaseInstance } from '../../executor/instances/instances.ts'
import type { StartedInstance } from '../../executor/runtimes/runtimes.ts'
import type { Snapshot } from '../../executor/snapshots/snapshot-store.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { createSilentLogger } from '../../shared/logger.ts'

export interface TestHost {
  readonly config: ExecutorConfig
  readonly host: Host
  readonly runtimes: HostRuntimes
  start(
    kind: 'lazy' | 'eager' | 'boot' | 'docker',
    fn: FunctionDef,
    image: ImageConfig,
    snapshot?: Snapshot,
  ): Promise<StartedInstance>
  stop(inst: StartedInstance): Promise<void>
  dispose(): Promise<void>
}

export async function createTestHost(env: Record<string, string> = {}): Promise<TestHost> {
  const stateDir = env.INITLESS_STATE_DIR ?? `/var/lib/initless-test/${randomBytes(4).toString('hex')}`
  await mkdir(stateDir, { recursive: true, mode: 0o700 })
  const config = loadExecutorConfig({ ...process.env, INITLESS_STATE_DIR: stateDir, ...env })
  const host = createHost(config, createSilentLogger())
  const runtimes = host.runtimes
  const deps = { stateDir, docker: host.docker, sandboxes: host.sandboxes, runtimes }
  return {
    config,
    host,
    runtimes,
    async start(kind, fn, image, snapshot) {
      const instanceId = `t${randomBytes(6).toString('hex')}`
      return runtimes[kind].start({
        instanceId,
        fn,
        image,
        ...(snapshot ? { snapshot } : {}),
        hostLabel: `test-${config.hostId}`,
        prepare: async () => {
          if (!snapshot) throw new Error('no snapshot')
          return prepareRestoreSandbox(deps, { id: instanceId, fn, image, snapshot })
        },
      })
    },
    async stop(inst) {
      // A test lets the lazy-pages daemon finish pushing the pages before the instance goes.
      if (inst.lazyDaemon)
        await Promise.race([inst.lazyDaemon.exited, new Promise((r) => setTimeout(r, 20_000))])
      await releaseInstance(deps, inst)
    },
    async dispose() {
      await runtimes.docker.discard()
      await rm(stateDir, { recursive: true, force: true })
    },
  }
}

export function stateDirOf(t: TestHost): string {
  return join(t.config.INITLESS_STATE_DIR)
}
