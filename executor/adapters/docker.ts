/**
 * The Docker engine adapter: the only file that imports dockerode. Docker builds and holds the
 * function images, unpacks their filesystems for runc sandboxes, and provides the plain-boot and
 * checkpoint-API paths the benchmarks compare against. dockerode quirks handled here: a 304 from
 * start/stop ("already started/stopped") is reported as an error; build and pull report failures
 * inside the progress stream, not as HTTP errors.
 */
import { spawn } from 'node:child_process'
import type { Readable } from 'node:stream'
import Docker from 'dockerode'
import { InitlessError } from '../../shared/errors.ts'

export interface EngineInfo {
  readonly serverVersion: string
  readonly apiVersion: string
  readonly experimental: boolean
  readonly cgroupDriver: string
}

export interface ImageConfig {
  readonly id: string
  readonly env: readonly string[]
  readonly cmd: readonly string[]
  readonly entrypoint: readonly string[]
  readonly workdir: string
  readonly user: string
  readonly sizeBytes: number
  readonly created: string
}

export interface BuildProgress {
  readonly line: string
}

export interface ContainerLaunch {
  readonly name: string
  readonly image: string
  readonly cmd?: readonly string[]
  readonly env: readonly string[]
  readonly memoryBytes: number
  readonly cpus: number
  readonly pids: number
  readonly labels: Record<string, string>
  /**
   * The system-call filter: a profile (JSON Docker's `--security-opt seccomp=` takes), `unconfined`,
   * or unset for Docker's own default profile.
   */
  readonly seccomp?: object | 'unconfined'
  /** Host directories bind-mounted into the container (the secrets directory, read-only). */
  readonly binds?: readonly { readonly source: string; readonly target: string; readonly readOnly: boolean }[]
}

export interface DockerEngine {
  info(): Promise<EngineInfo>
  /** Build `contextTar` (a tar stream of the build context); resolves with the image id. */
  build(
    contextTar: Readable,
    opts: {
      tag: string
      dockerfile: string
      buildArgs: Record<string, string>
      onProgress?: (p: BuildProgress) => void
    },
  ): Promise<string>
  inspectImage(ref: string): Promise<ImageConfig | undefined>
  tagImage(id: string, repo: string, tag: string): Promise<void>
  /** Push `repo:tag` to the registry named in `repo`; resolves with its manifest digest (sha256:...). */
  pushImage(repo: string, tag: string): Promise<string>
  /**
   * Pull `ref` (here `<registry>/<repo>@sha256:...`): the engine asks the registry for the manifest
   * and fetches the layers it lacks.
   */
  pullImage(ref: string): Promise<void>
  /**
   * Every `repo:tag` reference of images in `repo`, and every digest reference
   * (`<registry>/<repo>@sha256:...`) an image got from a push to or a pull from a registry.
   */
  imageRefs(repo: string): Promise<string[]>
  /** Untag `ref`, deleting the image once no tag and no container holds it. Missing: no error. */
  removeImage(ref: string): Promise<void>
  /** Unpack the image's filesystem into `dir` (through a created, never started, container). */
  exportRootfs(imageId: string, dir: string): Promise<void>
  /** Create and start a container on the default bridge; resolves with its id and address. */
  runContainer(launch: ContainerLaunch): Promise<{ id: string; ip: string }>
  removeContainer(id: string): Promise<void>
  containerLogs(id: string, tailLines: number): Promise<string>
  /** Containers carrying a label (reconciliation). */
  listContainers(
    label: string,
  ): Promise<{ id: string; name: string; labels: Record<string, string>; state: string }[]>
  /** Docker's checkpoint API (experimental): checkpoint a running container and keep it stopped. */
  checkpointContainer(id: string, checkpoint: string): Promise<void>
  /** `docker start --checkpoint`: restore a stopped container from its checkpoint. */
  startFromCheckpoint(id: string, checkpoint: string): Promise<{ ip: string }>
  createContainer(launch: ContainerLaunch): Promise<string>
  startContainer(id: string): Promise<{ ip: string }>
  containerRunning(id: string): Promise<boolean>
  /**
   * `docker stop`: SIGTERM, SIGKILL after `graceSeconds` (default 1); the container, and any
   * checkpoint it holds, stays. Already stopped (304) or gone (404) counts as stopped.
   */
  stopContainer(id: string, graceSeconds?: number): Promise<void>
  /** `docker kill --signal`: send a signal to the container's main process. */
  signalContainer(id: string, signal: string): Promise<void>
}

/** `unix:///var/run/docker.sock` or `tcp://host:port` into dockerode options. */
export function dockerOptions(host: string): Docker.DockerOptions {
  if (host.startsWith('unix://')) return { socketPath: host.slice('unix://'.length) }
  const url = new URL(host.replace(/^tcp:/, 'http:'))
  return { host: url.hostname, port: Number(url.port || 2375), protocol: 'http' }
}

function statusOf(err: unknown): number | undefined {
  return typeof err === 'object' && err !== null ? (err as { statusCode?: number }).statusCode : undefined
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

function engineError(what: string, err: unknown): InitlessError {
  const msg = errorText(err)
  return new InitlessError('ERR_COMMAND_FAILED', `docker: ${what}: ${msg}`, { cause: err })
}

/** Label of the short-lived containers rootfs exports create; its value is the host id. */
export const EXPORT_LABEL = 'initless.export'

/** Run a build; resolves with the image id its stream reported, if it did. */
async function buildImage(
  docker: Docker,
  contextTar: Parameters<DockerEngine['build']>[0],
  opts: Parameters<DockerEngine['build']>[1],
): Promise<string | undefined> {
  let stream: NodeJS.ReadableStream
  try {
    stream = await docker.buildImage(contextTar, {
      t: opts.tag,
      dockerfile: opts.dockerfile,
      buildargs: opts.buildArgs,
      rm: true,
      forcerm: true,
    })
  } catch (err) {
    throw new InitlessError(
      'ERR_IMAGE_BUILD_FAILED',
      `docker build ${opts.tag}: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    )
  }
  const lines: string[] = []
  let imageId: string | undefined
  await new Promise<void>((resolve, reject) => {
    docker.modem.followProgress(
      stream,
      (err: Error | null) => (err ? reject(err) : resolve()),
      (event: { stream?: string; error?: string; aux?: { ID?: string } }) => {
        if (event.aux?.ID) imageId = event.aux.ID
        const text = event.error ?? event.stream
        if (!text) return
        for (const line of text.split('\n')) {
          if (!line.trim()) continue
          lines.push(line)
          if (lines.length > 200) lines.shift()
          opts.onProgress?.({ line })
        }
        if (event.error) reject(new Error(event.error))
      },
    )
  }).catch((err: unknown) => {
    const msg = err instanceof Error ? err.message : String(err)
    throw new InitlessError(
      'ERR_IMAGE_BUILD_FAILED',
      `docker build ${opts.tag} failed: ${msg}\n${lines.slice(-15).join('\n')}`,
      {
        details: { lastLines: lines.slice(-15) },
      },
    )
  })
  return imageId
}

function imageConfigOf(i: Docker.ImageInspectInfo): ImageConfig {
  return {
    id: i.Id,
    env: i.Config.Env ?? [],
    cmd: i.Config.Cmd ?? [],
    entrypoint:
      (i.Config.Entrypoint as string[] | string | null | undefined) === null ||
      i.Config.Entrypoint === undefined
        ? []
        : ([] as string[]).concat(i.Config.Entrypoint),
    workdir: i.Config.WorkingDir || '/',
    user: i.Config.User ?? '',
    sizeBytes: i.Size,
    created: i.Created,
  }
}

/** Unpack a tar stream into `dir` with owners and modes as they are in it. */
function untar(tarStream: NodeJS.ReadableStream, dir: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const tar = spawn('tar', ['-x', '-p', '--numeric-owner', '-C', dir], {
      stdio: ['pipe', 'ignore', 'pipe'],
    })
    let stderr = ''
    tar.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    tar.on('error', reject)
    tar.on('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`tar exited ${code}: ${stderr.trim()}`)),
    )
    tarStream.on('error', reject)
    tarStream.pipe(tar.stdin)
  })
}

/** The container's address on Docker's default bridge. */
async function addressOf(docker: Docker, id: string): Promise<string> {
  const info = await docker.getContainer(id).inspect()
  const nets = Object.values(info.NetworkSettings.Networks ?? {})
  const ip = nets.find((n) => n.IPAddress)?.IPAddress
  if (!ip) throw new InitlessError('ERR_SANDBOX_SETUP_FAILED', `container ${id} has no IP address`)
  return ip
}

function hostConfig(l: ContainerLaunch): Docker.HostConfig {
  return {
    Memory: l.memoryBytes,
    MemorySwap: l.memoryBytes,
    NanoCpus: Math.round(l.cpus * 1e9),
    PidsLimit: l.pids,
    SecurityOpt: [
      'no-new-privileges',
      ...(l.seccomp === undefined
        ? []
        : [`seccomp=${l.seccomp === 'unconfined' ? 'unconfined' : JSON.stringify(l.seccomp)}`]),
    ],
    // Never publish ports: the gateway reaches the container at its own bridge address.
    NetworkMode: 'bridge',
    ...(l.binds?.length
      ? { Binds: l.binds.map((b) => `${b.source}:${b.target}:${b.readOnly ? 'ro' : 'rw'}`) }
      : {}),
  }
}

/** Without a tty, Docker multiplexes stdout/stderr with 8-byte frame headers. */
function demuxLogs(buf: Buffer): string {
  const out: Buffer[] = []
  for (let i = 0; i + 8 <= buf.length;) {
    const len = buf.readUInt32BE(i + 4)
    out.push(buf.subarray(i + 8, i + 8 + len))
    i += 8 + len
  }
  return Buffer.concat(out).toString('utf8')
}

type ImageCalls = Pick<
  DockerEngine,
  | 'info'
  | 'build'
  | 'inspectImage'
  | 'tagImage'
  | 'pushImage'
  | 'pullImage'
  | 'imageRefs'
  | 'removeImage'
  | 'exportRootfs'
>

/**
 * Follow a push or pull stream to its end: failures come inside the stream. Resolves with the
 * digest the stream reported (a push's `aux.Digest`).
 */
function followTransfer(docker: Docker, stream: NodeJS.ReadableStream): Promise<string | undefined> {
  let digest: string | undefined
  return new Promise((resolve, reject) => {
    docker.modem.followProgress(
      stream,
      (err: Error | null) => (err ? reject(err) : resolve(digest)),
      (event: { error?: string; aux?: { Digest?: string } }) => {
        if (event.aux?.Digest) digest = event.aux.Digest
        if (event.error) reject(new Error(event.error))
      },
    )
  })
}

/** The registry needs no credentials here; the engine still wants the header on a push. */
const NO_AUTH = { authconfig: {} }

/** The engine and its images. */
function imageCalls(docker: Docker, owner: { hostId?: string }): ImageCalls {
  const calls: ImageCalls = {
    async info() {
      const [info, version] = await Promise.all([
        docker.info() as Promise<{
          ServerVersion?: string
          ExperimentalBuild?: boolean
          CgroupDriver?: string
        }>,
        docker.version(),
      ])
      return {
        serverVersion: info.ServerVersion ?? version.Version,
        apiVersion: version.ApiVersion,
        experimental: info.ExperimentalBuild === true,
        cgroupDriver: info.CgroupDriver ?? '',
      }
    },

    async build(contextTar, opts) {
      const image = await buildImage(docker, contextTar, opts)
      const id = image ?? (await calls.inspectImage(opts.tag))?.id
      if (!id) throw new InitlessError('ERR_IMAGE_BUILD_FAILED', `docker build ${opts.tag} produced no image`)
      return id
    },

    async inspectImage(ref) {
      try {
        return imageConfigOf(await docker.getImage(ref).inspect())
      } catch (err) {
        if (statusOf(err) === 404) return undefined
        throw engineError(`inspect image ${ref}`, err)
      }
    },

    async tagImage(id, repo, tag) {
      await docker.getImage(id).tag({ repo, tag })
    },

    async pushImage(repo, tag) {
      try {
        const stream = await docker.getImage(`${repo}:${tag}`).push({ tag, ...NO_AUTH })
        const digest = await followTransfer(docker, stream)
        if (!digest) throw new Error('the registry reported no digest')
        return digest
      } catch (err) {
        throw new InitlessError('ERR_IMAGE_PUSH_FAILED', `docker push ${repo}:${tag}: ${errorText(err)}`, {
          cause: err,
        })
      }
    },

    async pullImage(ref) {
      try {
        await followTransfer(docker, await docker.pull(ref, NO_AUTH))
      } catch (err) {
        throw new InitlessError('ERR_IMAGE_PULL_FAILED', `docker pull ${ref}: ${errorText(err)}`, {
          cause: err,
        })
      }
    },

    async imageRefs(repo) {
      const images = await docker.listImages({ filters: { reference: [repo, `*/${repo}`] } })
      return images.flatMap((i) => [
        ...(i.RepoTags ?? []).filter((t) => t.startsWith(`${repo}:`)),
        ...(i.RepoDigests ?? []).filter((d) => d.includes(`/${repo}@sha256:`)),
      ])
    },

    async removeImage(ref) {
      try {
        await docker.getImage(ref).remove({ noprune: false })
      } catch (err) {
        // 404: already gone; 409: a container (an instance booted from it) still uses it.
        const status = statusOf(err)
        if (status !== 404 && status !== 409) throw engineError(`remove image ${ref}`, err)
      }
    },

    async exportRootfs(imageId, dir) {
      const container = await docker.createContainer({
        Image: imageId,
        Cmd: ['/nonexistent'],
        Labels: { [EXPORT_LABEL]: owner.hostId ?? '1' },
      })
      try {
        await untar(await container.export(), dir)
      } catch (err) {
        throw engineError(`export ${imageId}`, err)
      } finally {
        await container.remove({ force: true }).catch(() => undefined)
      }
    },
  }
  return calls
}

type CheckpointCalls = Pick<DockerEngine, 'checkpointContainer' | 'startFromCheckpoint'>

/** Docker's checkpoint API (experimental). */
function checkpointCalls(docker: Docker): CheckpointCalls {
  return {
    async checkpointContainer(id, checkpoint) {
      try {
        await (
          docker.getContainer(id) as unknown as { createCheckpoint(o: object): Promise<unknown> }
        ).createCheckpoint({ CheckpointID: checkpoint, Exit: true })
      } catch (err) {
        throw engineError(`checkpoint ${id}`, err)
      }
    },

    async startFromCheckpoint(id, checkpoint) {
      try {
        // `checkpoint` is a query parameter. dockerode sends start options as the JSON body too,
        // which Docker >= API 1.24 refuses (HTTP 400): an empty `_body` keeps the request bodiless.
        await docker.getContainer(id).start({ _query: { checkpoint }, _body: {} } as object)
      } catch (err) {
        if (statusOf(err) !== 304) throw engineError(`start ${id} from checkpoint ${checkpoint}`, err)
      }
      return { ip: await addressOf(docker, id) }
    },
  }
}

type ContainerCalls = Omit<DockerEngine, keyof ImageCalls | keyof CheckpointCalls>

/** Containers: create, start, stop, signal, remove, list, logs. */
function containerCalls(docker: Docker): ContainerCalls {
  const calls: ContainerCalls = {
    async createContainer(l) {
      const c = await docker.createContainer({
        name: l.name,
        Image: l.image,
        ...(l.cmd ? { Cmd: [...l.cmd] } : {}),
        Env: [...l.env],
        Labels: l.labels,
        HostConfig: hostConfig(l),
      })
      return c.id
    },

    async startContainer(id) {
      try {
        await docker.getContainer(id).start()
      } catch (err) {
        if (statusOf(err) !== 304) throw engineError(`start ${id}`, err)
      }
      return { ip: await addressOf(docker, id) }
    },

    async runContainer(l) {
      const id = await calls.createContainer(l)
      try {
        const { ip } = await calls.startContainer(id)
        return { id, ip }
      } catch (err) {
        await calls.removeContainer(id)
        throw err
      }
    },

    async removeContainer(id) {
      try {
        await docker.getContainer(id).remove({ force: true })
      } catch (err) {
        if (statusOf(err) !== 404 && statusOf(err) !== 409) throw engineError(`remove ${id}`, err)
      }
    },

    async containerLogs(id, tailLines) {
      return demuxLogs(
        await docker.getContainer(id).logs({ stdout: true, stderr: true, tail: tailLines, follow: false }),
      )
    },

    async listContainers(label) {
      const list = await docker.listContainers({ all: true, filters: { label: [label] } })
      return list.map((c) => ({
        id: c.Id,
        name: (c.Names[0] ?? '').replace(/^\//, ''),
        labels: c.Labels,
        state: c.State,
      }))
    },

    async containerRunning(id) {
      try {
        return (await docker.getContainer(id).inspect()).State.Running
      } catch (err) {
        if (statusOf(err) === 404) return false
        throw engineError(`inspect ${id}`, err)
      }
    },

    async stopContainer(id, graceSeconds = 1) {
      try {
        await docker.getContainer(id).stop({ t: graceSeconds })
      } catch (err) {
        if (statusOf(err) !== 304 && statusOf(err) !== 404) throw engineError(`stop ${id}`, err)
      }
    },

    async signalContainer(id, signal) {
      try {
        await docker.getContainer(id).kill({ signal })
      } catch (err) {
        throw engineError(`kill --signal ${signal} ${id}`, err)
      }
    },
  }
  return calls
}

export function createDockerEngine(
  options: Docker.DockerOptions,
  /** Labels this host's export containers, so a reconcile after a crash finds the ones left. */
  owner: { hostId?: string } = {},
): DockerEngine {
  const docker = new Docker(options)
  return { ...imageCalls(docker, owner), ...containerCalls(docker), ...checkpointCalls(docker) }
}
