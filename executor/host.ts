/**
 * Wires the host adapters (commands, network, mounts, runc, CRIU, Docker, sandboxes) from the
 * configuration. Called only by composition roots: executor/main.ts and the CLI.
 */
import { release } from 'node:os'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { createBaker, type Baker, type HostVersions } from './bake.ts'
import { createImageBuilder, type ImageBuilder } from './build.ts'
import { createSnapshotStore, type SnapshotStore } from './snapshot-store.ts'
import type { ExecutorConfig } from './config.ts'
import { createCriu, type Criu } from './criu.ts'
import { createDockerEngine, dockerOptions, type DockerEngine } from './docker.ts'
import { runCommand, type CommandRunner } from './exec.ts'
import { createNetworkManager, IpAllocator, type NetworkManager } from './network.ts'
import { createMounter, type Mounter } from './rootfs.ts'
import { createRunc, type Runc } from './runc.ts'
import { createSandboxManager, type SandboxManager } from './sandbox.ts'
import { runRestoreSelfTest, type SelfTestStep } from './selftest/selftest.ts'

export interface Host {
  readonly run: CommandRunner
  readonly network: NetworkManager
  readonly ips: IpAllocator
  readonly mounter: Mounter
  readonly runc: Runc
  readonly criu: Criu
  readonly docker: DockerEngine
  readonly sandboxes: SandboxManager
  readonly store: SnapshotStore
  readonly builder: ImageBuilder
  readonly baker: Baker
  versions(): Promise<HostVersions>
  selfTest(): Promise<SelfTestStep[]>
}

export function createHost(config: ExecutorConfig, logger: Logger): Host {
  const run = runCommand
  const network = createNetworkManager({
    run,
    settings: { bridge: config.INITLESS_BRIDGE, subnet: config.INITLESS_SUBNET },
  })
  // Leases live beside runc's state: per boot, shared by every process using the bridge.
  const ips = new IpAllocator(config.INITLESS_SUBNET, join(config.INITLESS_RUNC_ROOT, '..', 'ip-leases'))
  const mounter = createMounter({ run })
  const runc = createRunc({ run, root: config.INITLESS_RUNC_ROOT, bin: config.INITLESS_RUNC })
  const criu = createCriu({ run, bin: config.INITLESS_CRIU })
  const docker = createDockerEngine(dockerOptions(config.INITLESS_DOCKER_HOST))
  const sandboxes = createSandboxManager({ stateDir: config.INITLESS_STATE_DIR, network, ips, mounter, runc })
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
  })
  return {
    store,
    builder,
    baker,
    versions: hostVersions,
    run,
    network,
    ips,
    mounter,
    runc,
    criu,
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
