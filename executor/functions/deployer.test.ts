import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { InitlessError } from '../../shared/errors.ts'
import { createFakeFunctionRegistry } from '../../shared/function-registry-fake.ts'
import type { FunctionVersion } from '../../shared/function-registry.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { parseManifest } from '../../shared/manifest.ts'
import type { Baker } from '../snapshots/bake.ts'
import type { ImageBuilder } from '../snapshots/build.ts'
import { createDeployer, DeployStepError, versionsToDrop } from './deployer.ts'
import type { DockerEngine, ImageConfig } from '../adapters/docker.ts'
import type { Snapshot } from '../snapshots/snapshot-store.ts'
import { createImagePublisher, type ImagePublisher } from '../snapshots/publish.ts'
import { createFakeDocker } from '../adapters/docker-fake.ts'

const MANIFEST = parseManifest('port: 8080\n', 'hello/function.yaml', 'hello')
const pending = (id: string, createdAt: number): FunctionVersion => ({
  version: id,
  manifest: MANIFEST,
  state: 'pending',
  createdAt,
  contextBytes: 1,
  bakedOn: {},
})
const IMAGE = { id: 'sha256:img' } as ImageConfig
const publisherOver = (docker: DockerEngine) =>
  createImagePublisher({ docker, registry: '127.0.0.1:5000', logger: createSilentLogger() })

function setup(
  opts: {
    build?: () => Promise<void>
    bake?: () => Promise<void>
    keep?: number
    publisher?: ImagePublisher
  } = {},
) {
  const functions = createFakeFunctionRegistry()
  const calls: string[] = []
  const builder: Pick<ImageBuilder, 'build'> = {
    async build(fn, o) {
      calls.push(`build ${fn.version}`)
      o?.onProgress?.('Step 1/2 : FROM base')
      o?.onProgress?.('Step 2/2 : RUN false')
      await opts.build?.()
      return { fn: fn.name, tag: `initless/fn-hello:${fn.version}`, image: IMAGE, built: true, ms: 5 }
    },
  }
  const baker: Pick<Baker, 'bake'> = {
    async bake(fn) {
      calls.push(`bake ${fn.version}`)
      await opts.bake?.()
      return { snapshot: { meta: { key: `snap-${fn.version}` } } as Snapshot, baked: true }
    },
  }
  const deployer = createDeployer({
    hostId: 'h1',
    functions,
    source: {
      materialize: (fn, v) =>
        Promise.resolve({
          name: fn,
          dir: `/c/${v.version}`,
          manifestFile: '',
          manifest: v.manifest,
          version: v.version,
        }),
    },
    builder,
    baker,
    keepVersions: opts.keep ?? 2,
    ...(opts.publisher ? { publisher: opts.publisher } : {}),
    logger: createSilentLogger(),
  })
  return { functions, deployer, calls }
}

describe('deployer', () => {
  test('builds, bakes, records the image and snapshot, activates, and keeps the last N versions', async () => {
    const { functions, deployer, calls } = setup({ keep: 2 })
    for (const [i, v] of ['v1', 'v2', 'v3'].entries()) {
      await functions.putVersion('hello', pending(v, i))
      const r = await deployer.deploy({ fn: 'hello', version: v, traceId: 't' })
      assert.equal(r.version, v)
    }
    assert.deepEqual(calls, ['build v1', 'bake v1', 'build v2', 'bake v2', 'build v3', 'bake v3'])
    const record = await functions.get('hello')
    assert.equal(record?.active, 'v3')
    assert.deepEqual(
      record?.versions.map((v) => v.version),
      ['v3', 'v2'],
      'v1 dropped by retention',
    )
    const v3 = record?.versions[0]
    assert.deepEqual(
      [v3?.state, v3?.image?.tag, v3?.bakedOn.h1?.snapshotKey],
      ['ready', 'initless/fn-hello:v3', 'snap-v3'],
    )
  })

  for (const step of ['build', 'bake'] as const) {
    test(`a ${step} failure records the step and output and leaves the active version`, async () => {
      let fail = false
      const boom = async () => {
        if (!fail) return
        throw new InitlessError(
          step === 'build' ? 'ERR_IMAGE_BUILD_FAILED' : 'ERR_BAKE_NOT_READY',
          `${step} went wrong\n--- last output of hello:\nlisten EADDRINUSE`,
          { details: { output: 'listen EADDRINUSE' } },
        )
      }
      const { functions, deployer } = setup(step === 'build' ? { build: boom } : { bake: boom })
      await functions.putVersion('hello', pending('v1', 1))
      await deployer.deploy({ fn: 'hello', version: 'v1', traceId: 't' })
      fail = true
      await functions.putVersion('hello', pending('v2', 2))
      await assert.rejects(deployer.deploy({ fn: 'hello', version: 'v2', traceId: 't' }), (err: unknown) => {
        assert.ok(err instanceof DeployStepError)
        assert.equal(err.failure.step, step)
        assert.equal(err.failure.message, `${step} went wrong`)
        assert.match(err.failure.output ?? '', step === 'build' ? /RUN false/ : /EADDRINUSE/)
        return true
      })
      const record = await functions.get('hello')
      assert.equal(record?.active, 'v1')
      assert.equal(record?.versions.find((v) => v.version === 'v2')?.state, 'failed')
      assert.equal(record?.versions.find((v) => v.version === 'v2')?.failure?.step, step)
    })
  }

  test('with an image registry the built image is pushed and its digest recorded', async () => {
    const { docker, calls: dockerCalls } = createFakeDocker()
    const { functions, deployer, calls } = setup({ publisher: publisherOver(docker) })
    await functions.putVersion('hello', pending('v1', 1))
    const r = await deployer.deploy({ fn: 'hello', version: 'v1', traceId: 't' })
    assert.deepEqual(calls, ['build v1', 'bake v1'])
    const pushed = dockerCalls.filter((c) => c.method === 'pushImage').map((c) => c.arg)
    assert.deepEqual(pushed, ['127.0.0.1:5000/initless/fn-hello:v1'])
    const digest = (await functions.get('hello'))?.versions[0]?.image?.digest
    assert.match(digest ?? '', /^127\.0\.0\.1:5000\/initless\/fn-hello@sha256:[0-9a-f]{64}$/)
    assert.equal(r.digest, digest)
    assert.ok(
      dockerCalls.some((c) => c.method === 'removeImage' && c.arg === '127.0.0.1:5000/initless/fn-hello:v1'),
      'the registry tag is dropped again: only the content tag stays',
    )
  })

  test('a failed push fails the deploy at step publish and leaves the active version', async () => {
    let failing = false
    const { docker } = createFakeDocker({
      fail: (method) => (failing && method === 'pushImage' ? new Error('connection refused') : undefined),
    })
    const { functions, deployer, calls } = setup({ publisher: publisherOver(docker) })
    await functions.putVersion('hello', pending('v1', 1))
    await deployer.deploy({ fn: 'hello', version: 'v1', traceId: 't' })
    failing = true
    await functions.putVersion('hello', pending('v2', 2))
    await assert.rejects(deployer.deploy({ fn: 'hello', version: 'v2', traceId: 't' }), (err: unknown) => {
      assert.ok(err instanceof DeployStepError)
      assert.equal(err.failure.step, 'publish')
      assert.match(err.failure.message, /connection refused/)
      return true
    })
    assert.deepEqual(calls, ['build v1', 'bake v1', 'build v2'], 'nothing baked after a failed push')
    assert.equal((await functions.get('hello'))?.active, 'v1')
  })

  test('versionsToDrop keeps the active one and the newest others', () => {
    const vs = ['e', 'd', 'c', 'b', 'a'].map((v, i) => ({ ...pending(v, 10 - i) }))
    assert.deepEqual(versionsToDrop(vs, 'b', 3), ['c', 'a'])
    assert.deepEqual(versionsToDrop(vs, undefined, 2), ['c', 'b', 'a'])
    assert.deepEqual(versionsToDrop(vs, 'e', 1), ['d', 'c', 'b', 'a'])
  })
})
