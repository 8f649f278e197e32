/** An in-memory DockerEngine for unit tests (as shared/registry-fake.ts is for the registry). */
import { createHash } from 'node:crypto'
import type { ContainerLaunch, DockerEngine, ImageConfig } from './docker.ts'

export interface FakeContainer {
  readonly id: string
  readonly launch: ContainerLaunch
  running: boolean
  readonly checkpoints: Set<string>
}

export interface FakeDocker {
  readonly docker: DockerEngine
  /** Every call, in order: the method and its first argument. */
  readonly calls: { method: keyof DockerEngine; arg: unknown }[]
  /** Containers created and not removed. */
  readonly containers: Map<string, FakeContainer>
}

/** The image every fake build produces. */
export const FAKE_IMAGE: ImageConfig = {
  id: 'sha256:0123456789abcdef0123456789abcdef',
  env: [],
  cmd: ['/app'],
  entrypoint: [],
  workdir: '/',
  user: '',
  sizeBytes: 1,
  created: '2026-01-01T00:00:00Z',
}

/**
 * A Docker engine whose containers are records; a started one "runs" at `ip` (point it at a test
 * server on 127.0.0.1). `fail` returns the error a call rejects with (undefined: it succeeds).
 */
export function createFakeDocker(
  opts: {
    ip?: string
    fail?: (method: keyof DockerEngine, arg: unknown) => Error | undefined
    logs?: string
  } = {},
): FakeDocker {
  const ip = opts.ip ?? '127.0.0.1'
  const calls: { method: keyof DockerEngine; arg: unknown }[] = []
  const containers = new Map<string, FakeContainer>()
  /** `repo:tag` references given by tagImage. */
  const tags = new Set<string>()
  let next = 1
  const call = (method: keyof DockerEngine, arg: unknown) => {
    calls.push({ method, arg })
    const err = opts.fail?.(method, arg)
    if (err) throw err
  }
  const get = (id: string) => {
    const c = containers.get(id)
    if (!c) throw new Error(`docker: no such container ${id}`)
    return c
  }
  const create = (launch: ContainerLaunch) => {
    const id = `c${next++}`
    containers.set(id, { id, launch, running: false, checkpoints: new Set() })
    return id
  }
  const docker: DockerEngine = {
    info: async () => ({
      serverVersion: '20.10',
      apiVersion: '1.41',
      experimental: true,
      cgroupDriver: 'cgroupfs',
    }),
    async build(_tar, o) {
      call('build', o.tag)
      return FAKE_IMAGE.id
    },
    async inspectImage(ref) {
      call('inspectImage', ref)
      return { ...FAKE_IMAGE, id: ref.startsWith('sha256:') ? ref : FAKE_IMAGE.id }
    },
    async tagImage(id, repo, tag) {
      call('tagImage', id)
      tags.add(`${repo}:${tag}`)
    },
    async pushImage(repo, tag) {
      call('pushImage', `${repo}:${tag}`)
      return `sha256:${createHash('sha256').update(`${repo}:${tag}`).digest('hex')}`
    },
    async pullImage(ref) {
      call('pullImage', ref)
    },
    async imageRefs(repo) {
      call('imageRefs', repo)
      return [...tags].filter((t) => t.startsWith(`${repo}:`))
    },
    async removeImage(ref) {
      call('removeImage', ref)
      tags.delete(ref)
    },
    async exportRootfs(imageId) {
      call('exportRootfs', imageId)
    },
    async runContainer(launch) {
      call('runContainer', launch)
      const id = create(launch)
      get(id).running = true
      return { id, ip }
    },
    async removeContainer(id) {
      call('removeContainer', id)
      containers.delete(id)
    },
    async containerLogs(id) {
      call('containerLogs', id)
      return opts.logs ?? ''
    },
    async listContainers(label) {
      call('listContainers', label)
      const [k = '', v] = label.split('=')
      return [...containers.values()]
        .filter((c) => k in c.launch.labels && (v === undefined || c.launch.labels[k] === v))
        .map((c) => ({
          id: c.id,
          name: c.launch.name,
          labels: c.launch.labels,
          state: c.running ? 'running' : 'exited',
        }))
    },
    async checkpointContainer(id, checkpoint) {
      call('checkpointContainer', id)
      const c = get(id)
      c.checkpoints.add(checkpoint)
      c.running = false
    },
    async startFromCheckpoint(id, checkpoint) {
      call('startFromCheckpoint', id)
      const c = get(id)
      if (!c.checkpoints.has(checkpoint)) throw new Error(`docker: ${id} has no checkpoint ${checkpoint}`)
      c.running = true
      return { ip }
    },
    async createContainer(launch) {
      call('createContainer', launch)
      return create(launch)
    },
    async startContainer(id) {
      call('startContainer', id)
      get(id).running = true
      return { ip }
    },
    async containerRunning(id) {
      call('containerRunning', id)
      return containers.get(id)?.running ?? false
    },
    async stopContainer(id) {
      call('stopContainer', id)
      const c = containers.get(id)
      if (c) c.running = false
    },
    async signalContainer(id) {
      call('signalContainer', id)
    },
  }
  return { docker, calls, containers }
}
