/**
 * Root filesystems: each image's files are unpacked once into a read-only cache directory; every
 * sandbox mounts a copy-on-write overlay over it (plus, for restores, the snapshot's own layer:
 * the files the function wrote before its checkpoint, which a restored process expects to find).
 */
import { mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { CommandRunner } from './exec.ts'
import type { SandboxHelpers } from './sandbox-helper.ts'

/**
 * The writable layer's own filesystem: a tmpfs of `sizeBytes` mounted at `dir`, which holds the
 * overlay's upper and work dirs, so what the function writes is bounded (ENOSPC past it).
 */
export interface WritableLayer {
  readonly dir: string
  readonly sizeBytes: number
}

export interface Mounter {
  /**
   * Mount an overlay at `target`; `lowers` are listed top-most first. With `layer`, `upper` and
   * `work` must lie in `layer.dir`, which gets a tmpfs of its size first.
   */
  mountOverlay(opts: {
    lowers: readonly string[]
    upper: string
    work: string
    target: string
    layer?: WritableLayer
  }): Promise<void>
  /** Mount a tmpfs at `target` with `options` (not on the cold-start path: mount(8)). */
  mountTmpfs(target: string, options: string): Promise<void>
  unmount(target: string): Promise<void>
  /** Mount points at or below `prefix` (reconciliation), deepest first. */
  list(prefix: string): Promise<string[]>
  /** Copy a directory tree to `to` (created) with everything an overlay upper dir holds. */
  copyTree(from: string, to: string): Promise<void>
}

/** Mounts through the sandbox helper's system calls when there is one, else mount(8)/umount(8). */
export function createMounter(deps: { run: CommandRunner; helpers?: SandboxHelpers | undefined }): Mounter {
  const { helpers } = deps
  return {
    async mountOverlay({ lowers, upper, work, target, layer }) {
      if (layer) await mountLayer(deps, layer)
      await Promise.all([
        mkdir(upper, { recursive: true }),
        mkdir(work, { recursive: true }),
        mkdir(target, { recursive: true }),
      ])
      const options = `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${work},index=off`
      if (helpers) return helpers.setup.request({ op: 'mount-overlay', args: [target, options] })
      await deps.run('mount', ['-t', 'overlay', 'overlay', '-o', options, target], { timeoutMs: 30_000 })
    },

    async mountTmpfs(target, options) {
      await deps.run('mount', ['-t', 'tmpfs', '-o', options, 'initless-secrets', target], {
        timeoutMs: 30_000,
      })
    },

    async unmount(target) {
      if (helpers) return helpers.teardown.request({ op: 'umount', args: [target] })
      // Not mounted (exit 32) is fine: cleanup is idempotent. Lazy detach if something still holds it.
      const res = await deps.run('umount', [target], { okCodes: [0, 32] })
      if (res.code === 32 && !/not mounted|no mount point|not found/i.test(res.stderr)) {
        await deps.run('umount', ['-l', target], { okCodes: [0, 32] })
      }
    },

    async copyTree(from, to) {
      // -a keeps whiteouts (device nodes), owners, modes and the overlay's trusted.* xattrs.
      await deps.run('cp', ['-a', '-T', from, to], { timeoutMs: 600_000 })
    },

    async list(prefix) {
      const mounts = await readFile('/proc/self/mountinfo', 'utf8')
      const points = mounts
        .split('\n')
        .map((line) => line.split(' ')[4] ?? '')
        .map((p) => p.replace(/\\040/g, ' '))
        .filter((p) => p === prefix || p.startsWith(`${prefix}/`))
      return [...new Set(points)].sort((a, b) => b.length - a.length)
    },
  }
}

/** tmpfs options of a writable layer: its size, private to root, never executable set-uid. */
export function layerTmpfsOptions(sizeBytes: number): string {
  return `size=${sizeBytes},mode=0700`
}

/** Is this a sandbox helper that predates an operation (an older installed build)? */
function isUnknownOperation(err: unknown): boolean {
  return err instanceof Error && /unknown operation/.test(err.message)
}

/**
 * Mount the layer's tmpfs: through the sandbox helper (a system call, ~25 us), else mount(8)
 * (a process start). An installed helper older than `mount-tmpfs` gets mount(8) too.
 */
async function mountLayer(
  deps: { run: CommandRunner; helpers?: SandboxHelpers | undefined },
  layer: WritableLayer,
): Promise<void> {
  await mkdir(layer.dir, { recursive: true, mode: 0o700 })
  const options = layerTmpfsOptions(layer.sizeBytes)
  if (deps.helpers) {
    try {
      return await deps.helpers.setup.request({ op: 'mount-tmpfs', args: [layer.dir, options] })
    } catch (err) {
      if (!isUnknownOperation(err)) throw err
    }
  }
  await deps.run('mount', ['-t', 'tmpfs', '-o', `nosuid,nodev,${options}`, 'tmpfs', layer.dir], {
    timeoutMs: 30_000,
  })
}

/** Where an image's unpacked files live, keyed by the image id (content address). */
export function imageRootfsDir(stateDir: string, imageId: string): string {
  return join(stateDir, 'images', imageId.replace(/^sha256:/, ''), 'rootfs')
}

/**
 * The resolv.conf instances get: the host's, less what an instance cannot reach. Loopback
 * nameservers (a local caching resolver, systemd-resolved's 127.0.0.53) answer only in the host's
 * own network namespace, so they are left out, as Docker does; search and options lines stay.
 * With no nameserver left, instances get no resolver (said in the file).
 */
export function instanceResolvConf(host: string): string {
  const kept: string[] = []
  let dropped = 0
  for (const raw of host.split('\n')) {
    const line = raw.trim()
    if (!line || line.startsWith('#') || line.startsWith(';')) continue
    const [key, value = ''] = line.split(/\s+/)
    if (key === 'nameserver' && (/^127\./.test(value) || value === '::1' || value === '0.0.0.0')) {
      dropped++
      continue
    }
    if (['nameserver', 'search', 'domain', 'options', 'sortlist'].includes(key!)) kept.push(line)
  }
  const head = "# written by initless from the host's resolv.conf (loopback nameservers left out)\n"
  const none = kept.some((l) => l.startsWith('nameserver '))
    ? ''
    : `# no nameserver reachable from instances${dropped ? ' (the host names only loopback ones)' : ''}\n`
  return head + none + kept.map((l) => `${l}\n`).join('')
}

/**
 * The host's resolver configuration. systemd-resolved's /etc/resolv.conf names only its stub at
 * 127.0.0.53; the upstream servers it uses are in /run/systemd/resolve/resolv.conf, which is what
 * Docker gives containers on such hosts, and so does initless.
 */
export async function readHostResolvConf(
  path = '/etc/resolv.conf',
  resolvedUpstream = '/run/systemd/resolve/resolv.conf',
): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '')
  if (!/^\s*nameserver\s+127\.0\.0\.53\s*$/m.test(text)) return text
  return readFile(resolvedUpstream, 'utf8').catch(() => text)
}

/**
 * Unpack an image's filesystem once. `exportTo` streams the image's files as a tar into the given
 * directory (dockerode adapter). A half-written unpack never counts: it is written beside the final
 * directory and renamed into place only when complete.
 */
export async function ensureImageRootfs(
  stateDir: string,
  imageId: string,
  exportTo: (imageId: string, dir: string) => Promise<void>,
  hostResolvConf = '/etc/resolv.conf',
): Promise<string> {
  const dir = imageRootfsDir(stateDir, imageId)
  const marker = join(dir, '..', 'complete')
  if (
    await stat(marker).then(
      () => true,
      () => false,
    )
  )
    return dir
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`
  await rm(tmp, { recursive: true, force: true })
  await mkdir(tmp, { recursive: true, mode: 0o755 })
  try {
    await exportTo(imageId, tmp)
    // Files the runtime and CRIU need even in a minimal image.
    await mkdir(join(tmp, 'etc'), { recursive: true })
    await writeFile(
      join(tmp, 'etc', 'hosts'),
      '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n',
    )
    // Docker bind-mounts resolv.conf at run time, so an exported image has an empty one.
    const host = await readHostResolvConf(hostResolvConf)
    await writeFile(join(tmp, 'etc', 'resolv.conf'), instanceResolvConf(host))
    await rm(dir, { recursive: true, force: true })
    await rename(tmp, dir)
    await writeFile(marker, new Date().toISOString())
  } catch (err) {
    await rm(tmp, { recursive: true, force: true })
    throw err
  }
  return dir
}

/**
 * Record that a bake uses the unpacked image now (its marker's mtime). Until the bake commits, no
 * snapshot names the image, and between its mounts nothing holds it: collectImageRootfs leaves it
 * alone for ROOTFS_IDLE_MS after this. Restores need no mark: their snapshot names the image.
 */
export async function touchImageRootfs(stateDir: string, imageId: string): Promise<void> {
  const now = new Date()
  await utimes(join(imageRootfsDir(stateDir, imageId), '..', 'complete'), now, now)
}

/** An unpacked image no snapshot needs and no bake marked for this long is deleted (ms). */
export const ROOTFS_IDLE_MS = 3_600_000

/**
 * Delete the unpacked images no current snapshot restores over (`keep`: their image ids), that no
 * mount uses (`isInUse`: an instance, a pooled sandbox or a bake holds its overlay) and that were
 * unpacked or marked by a bake (touchImageRootfs) over `idleMs` ago. An unpack that never
 * completed counts from its directory's mtime. Each is renamed away before it is deleted, so
 * a later ensureImageRootfs unpacks it afresh rather than finding it half gone. Returns the image
 * ids removed.
 */
export async function collectImageRootfs(
  stateDir: string,
  keep: ReadonlySet<string>,
  isInUse: (dir: string) => boolean,
  idleMs = ROOTFS_IDLE_MS,
  now = Date.now(),
): Promise<string[]> {
  const root = join(stateDir, 'images')
  const removed: string[] = []
  for (const name of await readdir(root).catch(() => [] as string[])) {
    const dir = join(root, name)
    if (name.startsWith('.trash-')) {
      // Left by a collection that stopped midway.
      await rm(dir, { recursive: true, force: true })
      continue
    }
    const id = `sha256:${name}`
    if (keep.has(id) || isInUse(dir)) continue
    const used = await stat(join(dir, 'complete')).then(
      (st) => st.mtimeMs,
      () =>
        stat(dir).then(
          (st) => st.mtimeMs,
          () => now,
        ),
    )
    if (now - used < idleMs) continue
    const trash = join(root, `.trash-${name}-${now}`)
    if (
      !(await rename(dir, trash).then(
        () => true,
        () => false,
      ))
    )
      continue
    await rm(trash, { recursive: true, force: true })
    removed.push(id)
  }
  return removed
}
