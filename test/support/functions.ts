/**
 * Put function folders into a stack's function registry as active versions, without a gateway or
 * a deploy job: for tests that start executor processes alone. Each executor then builds and
 * bakes what is active when it starts, as an executor that joins a running system does.
 */
import { tarFolder } from '../../cli/deploy-client.ts'
import { createRedisFunctionRegistry } from '../../shared/function-registry.ts'
import { loadFunctionDefs } from '../../shared/functions.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import type { Redis } from '../../shared/redis.ts'
import { readContext } from '../../shared/versions.ts'

/** Register every function folder of `dir` under `prefix`; resolves with their version ids. */
export async function registerFunctions(
  redis: Redis,
  prefix: string,
  dir: string,
): Promise<Record<string, string>> {
  const registry = createRedisFunctionRegistry({ redis, logger: createSilentLogger(), prefix })
  const versions: Record<string, string> = {}
  for (const fn of (await loadFunctionDefs(dir)).functions) {
    const tar = await tarFolder(fn.dir)
    const { manifest, version } = readContext(fn.name, tar, 1 << 30)
    await registry.saveContext(fn.name, version, tar)
    await registry.putVersion(fn.name, {
      version,
      manifest,
      state: 'ready',
      createdAt: Date.now(),
      contextBytes: tar.length,
      bakedOn: {},
    })
    if (!(await registry.activate(fn.name, version))) throw new Error(`${fn.name}: not activated`)
    versions[fn.name] = version
  }
  return versions
}
