/**
 * Publishing a function image to the OCI registry (INITLESS_IMAGE_REGISTRY): the deploying host
 * pushes the image it built; every host then pulls it by the digest recorded in the function
 * registry, so all of them run the same bytes without building.
 */
import type { Logger } from 'pino'
import type { DockerEngine } from '../adapters/docker.ts'
import { splitTag, type BuiltImage } from './build.ts'

export interface ImagePublisher {
  /** Push the built image; resolves with its reference by digest (`<registry>/<repo>@sha256:...`). */
  publish(built: Pick<BuiltImage, 'fn' | 'tag'>): Promise<string>
}

export function createImagePublisher(deps: {
  readonly docker: Pick<DockerEngine, 'tagImage' | 'pushImage' | 'removeImage'>
  /** `host:port` of the registry. */
  readonly registry: string
  readonly logger: Logger
}): ImagePublisher {
  const log = deps.logger.child({ module: 'publish' })
  return {
    async publish(built) {
      const started = performance.now()
      const [repo, tag] = splitTag(built.tag)
      const remote = `${deps.registry}/${repo}`
      await deps.docker.tagImage(built.tag, remote, tag)
      try {
        const digest = await deps.docker.pushImage(remote, tag)
        const ref = `${remote}@${digest}`
        log.info({ fn: built.fn, ref, ms: Math.round(performance.now() - started) }, 'image pushed')
        return ref
      } finally {
        // Only the content tag stays: retention and delete remove images by it on every host.
        await deps.docker.removeImage(`${remote}:${tag}`)
      }
    },
  }
}
