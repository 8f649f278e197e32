/**
 * Where an instance's secrets are before its restore bind-mounts them at /run/secrets: one tmpfs
 * per executor (`<state>/secrets`, mode 0700, mounted at the first use), one directory per instance
 * on it, filled just before the restore. The values are never on disk, and an instance sees only
 * its own directory (a bind mount's root is that directory). One tmpfs rather than one per
 * instance: mounting one costs a process start (5-20 ms here) on the cold-start path, a directory
 * only a few file system calls.
 */
import { chown, mkdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Mounter } from '../adapters/rootfs.ts'
import type { SecretValue } from '../../shared/secrets.ts'

/** The tmpfs of a state dir. */
export function secretFilesRoot(stateDir: string): string {
  return join(stateDir, 'secrets')
}

/**
 * Size of the tmpfs (memory used only as files are written): room for a few hundred instances'
 * secrets at their limits (shared/secrets.ts: 32 values of up to 32 KiB each per instance).
 */
const TMPFS_OPTIONS = 'mode=0700,size=256m,nosuid,nodev,noexec'

export interface SecretOwner {
  readonly uid: number
  readonly gid: number
}

export interface SecretFiles {
  /** The directory of instance `id` (bind-mounted at /run/secrets by its restore). */
  dirFor(id: string): string
  /** Create the instance's directory, empty (mounting the tmpfs first if needed). */
  prepare(id: string): Promise<string>
  /** Write the values into the instance's directory: one file per name, 0400, owned by `owner`. */
  fill(id: string, values: readonly SecretValue[], owner: SecretOwner): Promise<string>
  /** Remove the instance's directory and its files. Idempotent. */
  remove(id: string): Promise<void>
  /** Unmount the tmpfs if it is mounted (shutdown). Instances keep their own bind mounts. */
  close(): Promise<void>
}

export function createSecretFiles(deps: {
  readonly stateDir: string
  readonly mounter: Pick<Mounter, 'mountTmpfs' | 'unmount' | 'list'>
}): SecretFiles {
  const root = secretFilesRoot(deps.stateDir)
  const dirFor = (id: string) => join(root, id)
  let mounted: Promise<void> | undefined
  const ensureMounted = () =>
    (mounted ??= (async () => {
      if ((await deps.mounter.list(root)).includes(root)) return
      await mkdir(root, { recursive: true, mode: 0o700 })
      await deps.mounter.mountTmpfs(root, TMPFS_OPTIONS)
    })().catch((err: unknown) => {
      mounted = undefined
      throw err
    }))

  const prepare = async (id: string) => {
    await ensureMounted()
    // World-searchable like Docker's /run/secrets: the names are no secret, the files are 0400.
    await mkdir(dirFor(id), { mode: 0o755 })
    return dirFor(id)
  }

  return {
    dirFor,
    prepare,
    async fill(id, values, owner) {
      await ensureMounted()
      const dir = dirFor(id)
      await mkdir(dir, { recursive: true, mode: 0o755 })
      await Promise.all(
        values.map(async (v) => {
          const file = join(dir, v.name)
          await writeFile(file, v.value, { mode: 0o400 })
          await chown(file, owner.uid, owner.gid)
        }),
      )
      return dir
    },
    async remove(id) {
      await rm(dirFor(id), { recursive: true, force: true })
    },
    async close() {
      mounted = undefined
      for (const m of await deps.mounter.list(root)) await deps.mounter.unmount(m)
    },
  }
}
