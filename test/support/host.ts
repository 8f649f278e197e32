/**
 * A real host (Docker, runc, CRIU) wired for tests, with a private state dir so snapshots are baked
 * from scratch, and helpers to start instances through the real runtimes.
 */
import { randomBytes } from 'node:crypto'
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { loadExecutorConfig, type ExecutorConfig } from '../../executor/config.ts'
import type { DockerEngine, ImageConfig } from '../../executor/adapters/docker.ts'
import { prepareRestoreSandbox, releaseInstance } from '../../executor/instances/instances.ts'
import type { StartedInstance } from '../../executor/runtimes/runtimes.ts'
import type { SandboxManager } from '../../executor/sandbox/sandbox.ts'
import type { Baker, HostVersions } from '../../executor/snapshots/bake.ts'
import type { ImageBuilder } from '../../executor/snapshots/build.ts'
import type { Snapshot, SnapshotStore } from '../../executor/snapshots/snapshot-store.ts'
import {
  createBuilder,
  createHostAdapters,
  createHostBaker,
  createRuntimes,
  createSandboxes,
  createStore,
  hostVersions,
  type HostAdapters,
  type Runtimes,
} from '../../executor/wiring.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import { createSilentLogger } from '../../shared/logger.ts'

/** The executor's units a test uses, wired as startExecutor wires them. */
export interface TestHostUnits {
  readonly adapters: HostAdapters
  readonly docker: DockerEngine
  readonly sandboxes: SandboxManager
  readonly store: SnapshotStore
  readonly builder: ImageBuilder
  readonly baker: Baker
  /** The sandbox helper in use, or undefined when sandboxes are prepared with ip and mount(8). */
  readonly sandboxHelper: string | undefined
  versions(): Promise<HostVersions>
}

export interface TestHost {
  readonly config: ExecutorConfig
  readonly host: TestHostUnits
  readonly runtimes: Runtimes
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
  const logger = createSilentLogger()
  const adapters = createHostAdapters(config, logger)
  const sandboxes = createSandboxes(config, adapters)
  const store = createStore(config)
  const host: TestHostUnits = {
    adapters,
    docker: adapters.docker,
    sandboxes,
    store,
    builder: createBuilder(config, adapters, logger),
    baker: createHostBaker(config, adapters, sandboxes, store, logger),
    sandboxHelper: adapters.helperPath,
    versions: hostVersions(adapters.criu),
  }
  const runtimes = createRuntimes(adapters, sandboxes, store, logger)
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
