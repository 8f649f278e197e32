/**
 * Wiring of an executor that serves the function registry (executor/start.ts): the registry and
 * its live copy, the unpacked definitions, the lifecycle that drains and collects, and the deploy
 * worker that builds, bakes and activates new versions.
 */
import type { Logger } from 'pino'
import { DEPLOY_QUEUE_SUFFIX } from '../shared/deploy-queue.ts'
import { createRedisFunctionRegistry, type FunctionRegistry } from '../shared/function-registry.ts'
import { createFunctionWatcher, type FunctionWatcher } from '../shared/function-watcher.ts'
import type { Redis } from '../shared/redis.ts'
import type { InstanceRegistry } from '../shared/registry.ts'
import type { DockerEngine } from './adapters/docker.ts'
import type { ExecutorConfig } from './config.ts'
import { createDeployWorker, type DeployWorker } from './functions/deploy-worker.ts'
import { createDeployer } from './functions/deployer.ts'
import { createFunctionSource, type FunctionSource } from './functions/function-source.ts'
import type { InstanceManager } from './instances/instances.ts'
import { createLifecycle, type Lifecycle } from './functions/lifecycle.ts'
import { recordBakes } from './functions/record-bakes.ts'
import { createImagePublisher } from './snapshots/publish.ts'
import type { Baker } from './snapshots/bake.ts'
import type { ImageBuilder } from './snapshots/build.ts'
import type { SnapshotStore } from './snapshots/snapshot-store.ts'

/** Full re-read of the function registry (ms); events make changes visible at once. */
const FUNCTIONS_REFRESH_MS = 5000

export interface RegistryFollower {
  readonly functions: FunctionRegistry
  readonly watcher: FunctionWatcher
  readonly source: FunctionSource
  /** The host's baker, recording each bake of a registry version in the function registry. */
  readonly baker: Baker
  /** Apply the registry's current state, then follow it and take deploy jobs. */
  start(instances: InstanceManager, registry: InstanceRegistry): Promise<Lifecycle>
  close(): Promise<void>
}

export async function createRegistryFollower(
  config: ExecutorConfig,
  deps: {
    readonly redis: Redis
    readonly store: SnapshotStore
    readonly docker: DockerEngine
    readonly builder: ImageBuilder
    readonly baker: Baker
    readonly logger: Logger
  },
): Promise<RegistryFollower> {
  const { logger } = deps
  const functions = createRedisFunctionRegistry({
    redis: deps.redis,
    logger,
    prefix: config.INITLESS_KEY_PREFIX,
  })
  const watcher = createFunctionWatcher({
    registry: functions,
    logger,
    refreshIntervalMs: FUNCTIONS_REFRESH_MS,
  })
  const source = createFunctionSource({ stateDir: config.INITLESS_STATE_DIR, registry: functions })
  const baker = recordBakes(deps.baker, { functions, hostId: config.hostId, logger })
  await watcher.start()
  let worker: DeployWorker | undefined
  let lifecycle: Lifecycle | undefined
  return {
    functions,
    watcher,
    source,
    baker,
    async start(instances, registry) {
      lifecycle = createLifecycle({
        hostId: config.hostId,
        watcher,
        source,
        registry,
        instances,
        store: deps.store,
        docker: deps.docker,
        baker,
        functions,
        logger,
        drainGraceMs: config.INITLESS_DRAIN_GRACE,
      })
      await lifecycle.start()
      const deployer = createDeployer({
        hostId: config.hostId,
        functions,
        source,
        builder: deps.builder,
        baker,
        ...(config.INITLESS_IMAGE_REGISTRY
          ? {
              publisher: createImagePublisher({
                docker: deps.docker,
                registry: config.INITLESS_IMAGE_REGISTRY,
                logger,
              }),
            }
          : {}),
        keepVersions: config.INITLESS_KEEP_VERSIONS,
        logger,
      })
      worker = createDeployWorker({
        redisUrl: config.INITLESS_REDIS_URL,
        queueName: config.INITLESS_QUEUE_NAME + DEPLOY_QUEUE_SUFFIX,
        deploy: (job) => deployer.deploy(job),
        logger,
      })
      return lifecycle
    },
    async close() {
      await Promise.allSettled([worker?.close(true), lifecycle?.close(), watcher.close()])
    },
  }
}
