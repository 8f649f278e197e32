/**
 * What the executor does on an admin's function event (published through the registry): scale to
 * zero stops this host's instances of the function; re-bake builds, bakes afresh and refills the
 * pools. Events for functions this executor does not serve are ignored.
 */
import type { Logger } from 'pino'
import type { RegistryEvent } from '../../shared/contracts.ts'
import { errorMessage } from '../../shared/errors.ts'
import type { FunctionDef } from '../../shared/functions.ts'
import type { Baker } from '../snapshots/bake.ts'
import type { ImageBuilder } from '../snapshots/build.ts'
import type { InstanceManager } from './instances.ts'

export interface FunctionEventDeps {
  readonly functions: () => readonly FunctionDef[]
  readonly instances: Pick<InstanceManager, 'live' | 'stop' | 'fillPools'>
  readonly builder: Pick<ImageBuilder, 'build'>
  readonly baker: Pick<Baker, 'bake'>
  readonly logger: Logger
}

/** The registry listener's onEvent; the work it starts runs in the background. */
export function functionEventHandler(deps: FunctionEventDeps): (event: RegistryEvent) => void {
  const { instances, logger } = deps
  return (event) => {
    if (event.type !== 'function') return
    const fn = deps.functions().find((f) => f.name === event.fn)
    if (!fn) return
    if (event.action === 'scale-to-zero') {
      const ids = instances
        .live()
        .filter((i) => i.fn === fn.name)
        .map((i) => i.id)
      logger.info({ fn: fn.name, instances: ids.length }, 'scale to zero requested')
      void Promise.all(ids.map((id) => instances.stop(id, 'scaled to zero')))
    } else {
      logger.info({ fn: fn.name }, 're-bake requested')
      void deps.builder
        .build(fn)
        .then((b) => deps.baker.bake(fn, b.image, { force: true }))
        .then(() => instances.fillPools())
        .catch((err: unknown) => logger.error({ fn: fn.name, err: errorMessage(err) }, 're-bake failed'))
    }
  }
}
