/** A recording SandboxManager for unit tests (as exec-fake.ts is for commands). */
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { RestorePath } from './restore-path.ts'
import type { Sandbox, SandboxLimitEvents, SandboxManager, SandboxRequest } from './sandbox.ts'

/** A sandbox request as the tests make them: a small function restored or booted in it. */
export function sandboxRequest(id: string, forRestore: boolean): SandboxRequest {
  return {
    id,
    fn: 'hello',
    lowers: ['/snapshots/hello/upper', '/images/hello/rootfs'],
    process: { args: ['node', 'server.js'], env: [], cwd: '/', uid: 0, gid: 0 },
    memoryBytes: 128 * 1024 * 1024,
    cpus: 0.5,
    pids: 64,
    forRestore,
  }
}

export interface FakeSandboxes {
  readonly sandboxes: SandboxManager
  readonly requests: SandboxRequest[]
  /** Ids of the sandboxes destroyed, in order. */
  readonly destroyed: string[]
  /** Ids of the sandboxes prepared and not destroyed. */
  live(): string[]
  /** Ids whose CPU limit was applied. */
  readonly limited: string[]
  /** Secrets written per sandbox id (name -> value), as fillSecrets got them. */
  readonly secrets: Map<string, Record<string, string>>
  /** Ids whose cgroup is frozen now. */
  readonly frozen: Set<string>
}

/**
 * Sandboxes as directories under `root` (pid file, log, CRIU work dir) whose namespace address is
 * `ip` (127.0.0.1: a test server there plays the function). `direct` marks them ready for a direct
 * `criu restore`. `fail.prepare` / `fail.destroy` return the error a call rejects with.
 */
export function createFakeSandboxes(opts: {
  root: string
  ip?: string
  direct?: boolean
  /** The limits a sandbox hit (default: none). */
  limitEvents?: (id: string) => SandboxLimitEvents
  fail?: { prepare?: (req: SandboxRequest) => Error | undefined; destroy?: (id: string) => Error | undefined }
}): FakeSandboxes {
  const requests: SandboxRequest[] = []
  const destroyed: string[] = []
  const limited: string[] = []
  const secrets = new Map<string, Record<string, string>>()
  const frozen = new Set<string>()
  const live = new Set<string>()
  const path: RestorePath = { direct: opts.direct ?? true, settled: true, reason: 'fake' }
  const sandboxes: SandboxManager = {
    restorePath: async () => path,
    async prepare(req) {
      requests.push(req)
      const err = opts.fail?.prepare?.(req)
      if (err) throw err
      const dir = join(opts.root, req.id)
      await mkdir(join(dir, 'criu'), { recursive: true })
      live.add(req.id)
      const sandbox: Sandbox = {
        id: req.id,
        fn: req.fn,
        dir,
        bundle: join(dir, 'bundle'),
        rootfs: join(dir, 'bundle', 'rootfs'),
        criuWorkDir: join(dir, 'criu'),
        criuConfig: join(dir, 'criu.conf'),
        logFile: join(dir, 'output.log'),
        pidFile: join(dir, 'pid'),
        netns: { name: `initless-${req.id}`, path: join(dir, 'netns'), ip: opts.ip ?? '127.0.0.1' },
        lowers: req.lowers,
        cpus: req.cpus,
        ...((opts.direct ?? true) ? { direct: { externalMounts: [] } } : {}),
        ...(req.secrets && req.forRestore ? { secretsDir: join(dir, 'secrets') } : {}),
      }
      return sandbox
    },
    async workDir(id) {
      const dir = join(opts.root, id, 'criu')
      await mkdir(dir, { recursive: true })
      return dir
    },
    async fillSecrets(sb, values) {
      if (!sb.secretsDir) throw new Error(`sandbox ${sb.id} was prepared without secrets`)
      secrets.set(sb.id, Object.fromEntries(values.map((v) => [v.name, v.value.toString()])))
    },
    async limitCpu(sb) {
      limited.push(sb.id)
    },
    async setFrozen(sb, isFrozen) {
      if (isFrozen) frozen.add(sb.id)
      else frozen.delete(sb.id)
    },
    async usage(sb) {
      return { memoryBytes: live.has(sb.id) ? 20 * 1024 * 1024 : 0, cpuNs: 0 }
    },
    async limitEvents(sb) {
      return opts.limitEvents?.(sb.id) ?? { oomKills: 0, pidsMax: 0, diskFull: false }
    },
    async destroy(sb) {
      destroyed.push(sb.id)
      live.delete(sb.id)
      const err = opts.fail?.destroy?.(sb.id)
      if (err) throw err
      await rm(sb.dir, { recursive: true, force: true })
    },
  }
  return { sandboxes, requests, destroyed, limited, frozen, secrets, live: () => [...live] }
}
