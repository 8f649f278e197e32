/**
 * How the executor's units are built from its configuration, one function per unit, each taking
 * only what that unit needs. Composition roots call them: startExecutor (start.ts) wires the whole
 * executor with them, the CLI (doctor, build, bake) and the integration tests the parts they use.
 */
import { release } from 'node:os'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { createCriu, type Criu } from './adapters/criu.ts'
import { createDockerEngine, dockerOptions, type DockerEngine } from './adapters/docker.ts'
import { runCommand, type CommandRunner } from './adapters/exec.ts'
import { createNetworkManager, IpAllocator, type NetworkManager } from './adapters/network.ts'
import { createMounter, type Mounter } from './adapters/rootfs.ts'
import { createRunc, type Runc } from './adapters/runc.ts'
import { installedHelperPath, installedProbeServer, NATIVE_DIR } from './adapters/native.ts'
import { createSandboxHelpers, type SandboxHelpers } from './adapters/sandbox-helper.ts'
import type { ExecutorConfig } from './config.ts'
import { createDockerCheckpointRuntime, type DockerCheckpointRuntime } from './runtimes/docker-checkpoint.ts'
import { createBootRuntime, createRuncRestoreRuntime, type Runtime } from './runtimes/runtimes.ts'
import { runRestoreSelfTest, type SelfTestStep } from './runtimes/selftest.ts'
import { createSandboxManager, type SandboxManager } from './sandbox/sandbox.ts'
import type { SecretFiles } from './sandbox/secret-files.ts'
import { createBaker, type Baker, type HostVersions } from './snapshots/bake.ts'
import { createImageBuilder, type ImageBuilder } from './snapshots/build.ts'
import { createSnapshotStore, type Snapshot, type SnapshotStore } from './snapshots/snapshot-store.ts'

/** The adapters to the host and its vendors, each built from the configuration alone. */
export interface HostAdapters {
  readonly run: CommandRunner
  /** The sandbox helper processes; undefined: sandboxes are prepared with ip and mount(8). */
  readonly helpers: SandboxHelpers | undefined
  /** The helper binary in use, if any (the doctor reports it). */
  readonly helperPath: string | undefined
  readonly network: NetworkManager
  readonly ips: IpAllocator
  readonly mounter: Mounter
  readonly runc: Runc
  readonly criu: Criu
  readonly docker: DockerEngine
}

/** The ways to start an instance. */
export interface Runtimes {
  readonly lazy: Runtime
  readonly eager: Runtime
  readonly boot: Runtime
  readonly docker: DockerCheckpointRuntime
}

/** The sandbox helper binary the configuration asks for (undefined: ip and mount(8)). */
export function sandboxHelperPath(
  config: Pick<ExecutorConfig, 'INITLESS_SANDBOX_HELPER'>,
): string | undefined {
  const setting = config.INITLESS_SANDBOX_HELPER
  if (setting === 'off') return undefined
  return setting === 'auto' ? installedHelperPath() : setting
}

export function createHostAdapters(config: ExecutorConfig, logger: Logger): HostAdapters {
  const run = runCommand
  const helperPath = sandboxHelperPath(config)
  if (!helperPath && config.INITLESS_SANDBOX_HELPER === 'auto') {
    logger.warn(
      `no sandbox helper installed in ${NATIVE_DIR} (run scripts/provision.sh): sandboxes are prepared with ip and mount, 60-80 ms slower`,
    )
  }
  const helpers = helperPath ? createSandboxHelpers(helperPath) : undefined
  return {
    run,
    helpers,
    helperPath,
    network: createNetworkManager({
      run,
      settings: { bridge: config.INITLESS_BRIDGE, subnet: config.INITLESS_SUBNET },
      helpers,
    }),
    // Leases live beside runc's state: per boot, shared by every process using the bridge.
    ips: new IpAllocator(config.INITLESS_SUBNET, join(config.INITLESS_RUNC_ROOT, '..', 'ip-leases')),
    mounter: createMounter({ run, helpers }),
    runc: createRunc({ run, root: config.INITLESS_RUNC_ROOT, bin: config.INITLESS_RUNC }),
    criu: createCriu({ run, bin: config.INITLESS_CRIU, helper: helpers?.setup }),
    docker: createDockerEngine(dockerOptions(config.INITLESS_DOCKER_HOST), { hostId: config.hostId }),
  }
}

export function createSandboxes(
  config: ExecutorConfig,
  a: Pick<HostAdapters, 'network' | 'ips' | 'mounter' | 'runc' | 'helpers'>,
  /** The executor's secret files; without, restores mount an empty /run/secrets (CLI, doctor). */
  secrets?: SecretFiles,
): SandboxManager {
  return createSandboxManager({
    ...(secrets ? { secrets } : {}),
    stateDir: config.INITLESS_STATE_DIR,
    network: a.network,
    ips: a.ips,
    mounter: a.mounter,
    runc: a.runc,
    helper: a.helpers?.setup,
    withoutHelper:
      config.INITLESS_SANDBOX_HELPER === 'off' ? 'sandbox helper off' : 'no sandbox helper installed',
  })
}

/** CRIU's version and the kernel's, asked once: both are part of every snapshot's identity. */
export function hostVersions(criu: Pick<Criu, 'version'>): () => Promise<HostVersions> {
  let versions: Promise<HostVersions> | undefined
  return () => (versions ??= criu.version().then((criuVersion) => ({ criuVersion, kernel: release() })))
}

export function createStore(config: ExecutorConfig): SnapshotStore {
  return createSnapshotStore({ stateDir: config.INITLESS_STATE_DIR })
}

export function createBuilder(
  config: ExecutorConfig,
  a: Pick<HostAdapters, 'docker'>,
  logger: Logger,
): ImageBuilder {
  return createImageBuilder({ docker: a.docker, baseImage: config.INITLESS_BASE_IMAGE, logger })
}

export function createHostBaker(
  config: ExecutorConfig,
  a: Pick<HostAdapters, 'docker' | 'runc' | 'criu'>,
  sandboxes: SandboxManager,
  store: SnapshotStore,
  logger: Logger,
): Baker {
  return createBaker({
    stateDir: config.INITLESS_STATE_DIR,
    docker: a.docker,
    runc: a.runc,
    criu: a.criu,
    sandboxes,
    store,
    versions: hostVersions(a.criu),
    logger,
    prefetch: config.INITLESS_PREFETCH,
  })
}

export function createRuntimes(
  a: Pick<HostAdapters, 'runc' | 'criu' | 'docker'>,
  sandboxes: SandboxManager,
  store: Pick<SnapshotStore, 'verify'>,
  logger: Logger,
  secrets?: SecretFiles,
): Runtimes {
  const restore = { runc: a.runc, criu: a.criu, sandboxes, verify: (s: Snapshot) => store.verify(s) }
  return {
    lazy: createRuncRestoreRuntime({ ...restore, lazy: true }),
    eager: createRuncRestoreRuntime({ ...restore, lazy: false }),
    boot: createBootRuntime({ docker: a.docker, ...(secrets ? { secrets } : {}) }),
    docker: createDockerCheckpointRuntime({ docker: a.docker, logger }),
  }
}

/** The end-to-end restore self-test (`initless doctor`), on this host's bridge and state dir. */
export function createSelfTest(
  config: ExecutorConfig,
  a: Pick<HostAdapters, 'runc' | 'criu' | 'network'>,
  sandboxes: SandboxManager,
): () => Promise<SelfTestStep[]> {
  return async () => {
    await a.network.ensureBridge()
    return runRestoreSelfTest({
      probeServer: installedProbeServer(),
      runc: a.runc,
      criu: a.criu,
      sandboxes,
      workDir: join(config.INITLESS_STATE_DIR, 'selftest'),
    })
  }
}
