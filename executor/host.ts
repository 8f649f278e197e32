/**
 * Wires the host adapters (commands, network, mounts, runc, CRIU, Docker, sandboxes) from the
 * configuration. Called only by composition roots: executor/main.ts and the CLI.
 */
import { release } from 'node:os'
import { join } from 'node:path'
import type { Logger } from 'pino'
import type { FunctionDef } from '../shared/functions.ts'
import type { InstanceRegistry } from '../shared/registry.ts'
import { createInstanceManager, type InstanceManager } from './instances/instances.ts'
import { createBaker, type Baker, type HostVersions } from './snapshots/bake.ts'
import { createImageBuilder, type ImageBuilder } from './snapshots/build.ts'
import { createDockerCheckpointRuntime, type DockerCheckpointRuntime } from './runtimes/docker-checkpoint.ts'
import { createBootRuntime, createRuncRestoreRuntime, type Runtime } from './runtimes/runtimes.ts'
import { createSnapshotStore, type Snapshot, type SnapshotStore } from './snapshots/snapshot-store.ts'
import type { ExecutorConfig } from './config.ts'
import { createCriu, type Criu } from './adapters/criu.ts'
import { createDockerEngine, dockerOptions, type DockerEngine } from './adapters/docker.ts'
import { runCommand, type CommandRunner } from './adapters/exec.ts'
import { createNetworkManager, IpAllocator, type NetworkManager } from './adapters/network.ts'
import { createMounter, type Mounter } from './adapters/rootfs.ts'
import { createRunc, type Runc } from './adapters/runc.ts'
import { createSandboxManager, type SandboxManager } from './sandbox/sandbox.ts'
import { createSandboxHelpers, installedHelperPath } from './adapters/sandbox-helper.ts'
import { runRestoreSelfTest, type SelfTestStep } from './runtimes/selftest.ts'

export interface HostRuntimes {
  readonly lazy: Runtime
  readonly eager: Runtime
  readonly boot: Runtime
  readonly docker: DockerCheckpointRuntime
}

export interface Host {
  readonly config: ExecutorConfig
  readonly run: CommandRunner
  readonly network: NetworkManager
  readonly ips: IpAllocator
  readonly mounter: Mounter
  readonly runc: Runc
  readonly criu: Criu
  /** The sandbox helper in use, or undefined when sandboxes are prepared with ip and mount(8). */
  readonly sandboxHelper: string | undefined
  readonly docker: DockerEngine
  readonly sandboxes: SandboxManager
  readonly store: SnapshotStore
  readonly builder: ImageBuilder
  readonly baker: Baker
  /** The ways to start an instance, wired to this host's adapters. */
  readonly runtimes: HostRuntimes
  versions(): Promise<HostVersions>
  selfTest(): Promise<SelfTestStep[]>
}

/** The sandbox helper binary the configuration asks for (undefined: ip and mount(8)). */
export function sandboxHelperPath(
  config: Pick<ExecutorConfig, 'INITLESS_SANDBOX_HELPER'>,
): string | undefined {
  const setting = config.INITLESS_SANDBOX_HELPER
  if (setting === 'off') return undefined
  return setting === 'auto' ? installedHelperPath() : setting
}

export function createHost(config: ExecutorConfig, logger: Logger): Host {
  const run = runCommand
  const sandboxHelper = sandboxHelperPath(config)
  if (!sandboxHelper && config.INITLESS_SANDBOX_HELPER === 'auto') {
    logger.warn(
      'no sandbox helper built from this source (run scripts/provision.sh): sandboxes are prepared with ip and mount, 60-80 ms slower',
    )
  }
  const helpers = sandboxHelper ? createSandboxHelpers(sandboxHelper) : undefined
  const network = createNetworkManager({
    run,
    settings: { bridge: config.INITLESS_BRIDGE, subnet: config.INITLESS_SUBNET },
    helpers,
  })
  // Leases live beside runc's state: per boot, shared by every process using the bridge.
  const ips = new IpAllocator(config.INITLESS_SUBNET, join(config.INITLESS_RUNC_ROOT, '..', 'ip-leases'))
  const mounter = createMounter({ run, helpers })
  const runc = createRunc({ run, root: config.INITLESS_RUNC_ROOT, bin: config.INITLESS_RUNC })
  const criu = createCriu({ run, bin: config.INITLESS_CRIU, helper: helpers?.setup })
  const docker = createDockerEngine(dockerOptions(config.INITLESS_DOCKER_HOST), { hostId: config.hostId })
  const sandboxes = createSandboxManager({
    stateDir: config.INITLESS_STATE_DIR,
    network,
    ips,
    mounter,
    runc,
    helper: helpers?.setup,
    withoutHelper:
      config.INITLESS_SANDBOX_HELPER === 'off'
        ? 'sandbox helper off'
        : 'no sandbox helper built from this source',
  })
  const store = createSnapshotStore({ stateDir: config.INITLESS_STATE_DIR })
  let versions: Promise<HostVersions> | undefined
  const hostVersions = () =>
    (versions ??= criu.version().then((criuVersion) => ({ criuVersion, kernel: release() })))
  const builder = createImageBuilder({ docker, baseImage: config.INITLESS_BASE_IMAGE, logger })
  const baker = createBaker({
    stateDir: config.INITLESS_STATE_DIR,
    docker,
    runc,
    criu,
    sandboxes,
    store,
    versions: hostVersions,
    logger,
    prefetch: config.INITLESS_PREFETCH,
  })
  const verify = (snapshot: Snapshot) => store.verify(snapshot)
  const runtimes: HostRuntimes = {
    lazy: createRuncRestoreRuntime({ runc, criu, sandboxes, lazy: true, verify }),
    eager: createRuncRestoreRuntime({ runc, criu, sandboxes, lazy: false, verify }),
    boot: createBootRuntime({ docker }),
    docker: createDockerCheckpointRuntime({ docker, logger }),
  }
  return {
    config,
    store,
    builder,
    baker,
    runtimes,
    versions: hostVersions,
    run,
    network,
    ips,
    mounter,
    runc,
    criu,
    sandboxHelper,
    docker,
    sandboxes,
    async selfTest() {
      await network.ensureBridge()
      return runRestoreSelfTest({
        run,
        runc,
        criu,
        sandboxes,
        workDir: join(config.INITLESS_STATE_DIR, 'selftest'),
      })
    },
  }
}

/** The instance manager over a host's adapters; the caller brings identity, functions and registry. */
export function createHostInstanceManager(
  host: Host,
  opts: {
    hostId: string
    functions: () => readonly FunctionDef[]
    registry: InstanceRegistry
    logger: Logger
  },
): InstanceManager {
  return createInstanceManager({
    ...opts,
    stateDir: host.config.INITLESS_STATE_DIR,
    lazyThreshold: host.config.INITLESS_LAZY_THRESHOLD,
    builder: host.builder,
    baker: host.baker,
    store: host.store,
    docker: host.docker,
    sandboxes: host.sandboxes,
    runtimes: host.runtimes,
  })
}
