/**
 * Function image builds. Images are tagged by content — the build context's files, the Dockerfile
 * name, the build arguments and the base image's id — so an unchanged function is never rebuilt and
 * a changed base image rebuilds everything on top of it. A definition whose image was published to
 * a registry (`FunctionDef.image`, a reference by digest) is pulled instead, once per process: the
 * same bytes on every host, whatever each host's base image.
 */
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { lstat, readdir, readFile, readlink } from 'node:fs/promises'
import { join, relative } from 'node:path'
import type { Logger } from 'pino'
import { InitlessError } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import type { DockerEngine, ImageConfig } from '../adapters/docker.ts'

export interface BuiltImage {
  readonly fn: string
  readonly tag: string
  readonly image: ImageConfig
  /** False when an image with the same content tag already existed. */
  readonly built: boolean
  readonly ms: number
}

export interface ImageBuilder {
  build(fn: FunctionDef, opts?: { force?: boolean; onProgress?: (line: string) => void }): Promise<BuiltImage>
  /** The image a function's current content would have, if it is built. */
  current(fn: FunctionDef): Promise<{ tag: string; image: ImageConfig | undefined }>
}

export const IMAGE_REPO_PREFIX = 'initless/fn-'

/** `repo:tag` into its two parts (a registry's `host:port/` prefix may hold a colon too). */
export function splitTag(ref: string): [string, string] {
  const at = ref.lastIndexOf(':')
  return at > ref.lastIndexOf('/') ? [ref.slice(0, at), ref.slice(at + 1)] : [ref, 'latest']
}

/** Hash every file of a build context: relative path, mode and content (links by target). */
export async function hashContext(dir: string): Promise<string> {
  const hash = createHash('sha256')
  async function walk(d: string): Promise<void> {
    const entries = (await readdir(d)).sort()
    for (const name of entries) {
      const path = join(d, name)
      const st = await lstat(path)
      const rel = relative(dir, path)
      if (st.isDirectory()) {
        hash.update(`d ${rel}\n`)
        await walk(path)
      } else if (st.isSymbolicLink()) {
        hash.update(`l ${rel} ${await readlink(path)}\n`)
      } else if (st.isFile()) {
        // The size delimits the content: without it an empty file followed by another hashes like
        // one file whose content is the second's header and content.
        const content = await readFile(path)
        hash.update(`f ${rel} ${st.mode & 0o777} ${content.length}\n`)
        hash.update(content)
      }
    }
  }
  await walk(dir)
  return hash.digest('hex')
}

export function createImageBuilder(deps: {
  docker: DockerEngine
  baseImage: string
  logger: Logger
}): ImageBuilder {
  const log = deps.logger.child({ module: 'build' })
  /** Digest references pulled by this process (a digest names immutable content). */
  const pulled = new Map<string, Promise<void>>()

  /** The published image of `fn` (FunctionDef.image), pulled from the registry by digest. */
  async function pull(fn: FunctionDef, from: { ref: string; tag: string }): Promise<BuiltImage> {
    const started = performance.now()
    let p = pulled.get(from.ref)
    if (!p) {
      p = deps.docker.pullImage(from.ref).then(async () => {
        const [repo, tag] = splitTag(from.tag)
        await deps.docker.tagImage(from.ref, repo, tag)
        const ms = Math.round(performance.now() - started)
        log.info({ fn: fn.name, version: fn.version, ref: from.ref, tag: from.tag, ms }, 'image pulled')
      })
      p.catch(() => pulled.delete(from.ref))
      pulled.set(from.ref, p)
    }
    await p
    const image = await deps.docker.inspectImage(from.ref)
    if (!image && pulled.get(from.ref) === p) {
      // Removed since (retention, by hand): pull it again.
      pulled.delete(from.ref)
      return pull(fn, from)
    }
    if (!image)
      throw new InitlessError('ERR_IMAGE_NOT_FOUND', `${from.ref} is not in the engine after its pull`)
    return { fn: fn.name, tag: from.tag, image, built: false, ms: performance.now() - started }
  }

  async function contentTag(fn: FunctionDef): Promise<{ tag: string; buildArgs: Record<string, string> }> {
    const base = await deps.docker.inspectImage(deps.baseImage)
    // With a registry, a Dockerfile's own default base applies; here the local base image does.
    const buildArgs: Record<string, string> = {
      ...(base ? { BASE_IMAGE: deps.baseImage } : {}),
      ...fn.manifest.build.args,
    }
    const h = createHash('sha256')
      .update(await hashContext(fn.dir))
      .update(
        `\0${fn.manifest.build.dockerfile}\0${JSON.stringify(Object.entries(buildArgs).sort())}\0${base?.id ?? ''}`,
      )
      .digest('hex')
    return { tag: `${IMAGE_REPO_PREFIX}${fn.name}:${h.slice(0, 16)}`, buildArgs }
  }

  return {
    async current(fn) {
      if (fn.image) return { tag: fn.image.tag, image: await deps.docker.inspectImage(fn.image.ref) }
      const { tag } = await contentTag(fn)
      return { tag, image: await deps.docker.inspectImage(tag) }
    },

    async build(fn, opts = {}) {
      if (fn.image) return pull(fn, fn.image)
      const started = performance.now()
      const { tag, buildArgs } = await contentTag(fn)
      if (!opts.force) {
        const existing = await deps.docker.inspectImage(tag)
        if (existing)
          return { fn: fn.name, tag, image: existing, built: false, ms: performance.now() - started }
      }
      log.info({ fn: fn.name, tag }, 'image build started')
      const tar = spawn('tar', ['-c', '-C', fn.dir, '.'], { stdio: ['ignore', 'pipe', 'pipe'] })
      const id = await deps.docker.build(tar.stdout, {
        tag,
        dockerfile: fn.manifest.build.dockerfile,
        buildArgs,
        ...(opts.onProgress ? { onProgress: (p: { line: string }) => opts.onProgress?.(p.line) } : {}),
      })
      const [repo, version] = splitTag(tag)
      // `latest` follows the newest build, for humans and `docker run`.
      await deps.docker.tagImage(id, repo, 'latest')
      const image = await deps.docker.inspectImage(id)
      if (!image || image.id !== id)
        throw new InitlessError('ERR_IMAGE_BUILD_FAILED', `built image ${id} vanished`)
      const ms = performance.now() - started
      log.info({ fn: fn.name, tag, version, image: id, ms: Math.round(ms) }, 'image built')
      return { fn: fn.name, tag, image, built: true, ms }
    },
  }
}
