import assert from 'node:assert/strict'
import { randomBytes, randomUUID } from 'node:crypto'
import { readdir } from 'node:fs/promises'
import { after, before, describe, test } from 'node:test'
import type { Baker } from '../executor/snapshots/bake.ts'
import type { BuiltImage } from '../executor/snapshots/build.ts'
import {
  CONTAINERD_TMP,
  DOCKER_CHECKPOINT_LABEL,
  templateName,
} from '../executor/runtimes/docker-checkpoint.ts'
import { createInstanceManager } from '../executor/instances/instances.ts'
import { httpOnce } from '../executor/adapters/probe.ts'
import type { StartedInstance } from '../executor/runtimes/runtimes.ts'
import { isInitlessError } from '../shared/errors.ts'
import { loadFunctionDefs, type FunctionDef } from '../shared/functions.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { createFakeRegistry } from '../shared/registry-fake.ts'
import { createTestHost, type TestHost } from './support/host.ts'
import { isCI, requireServices } from './support/integration.ts'

const samples = await loadFunctionDefs('functions')
const helloNode = samples.functions.find((f) => f.name === 'hello-node') as FunctionDef

/**
 * hello-node under a name unique to this run: the template container is named after the function,
 * so this test never meets (or removes) a template of another test or executor.
 */
function uniqueFn(policy?: 'boot'): FunctionDef {
  const name = `hello-node-t${randomBytes(4).toString('hex')}`
  const restore = policy ? { ...helloNode.manifest.restore, policy } : helloNode.manifest.restore
  return { ...helloNode, name, manifest: { ...helloNode.manifest, name, restore } }
}

async function assertAnswers(inst: StartedInstance): Promise<void> {
  const res = await httpOnce(inst.ip, inst.port, '/', { timeoutMs: 10_000 })
  assert.equal(res.status, 200, res.body)
  assert.ok(res.body.includes('"message":"hello from node"'), res.body)
}

const containerdCopies = async () =>
  (await readdir(CONTAINERD_TMP)).filter((d) => d.startsWith('ctrd-checkpoint'))

describe('docker runtime: Docker checkpoint API, one template container per function', () => {
  let th: TestHost | undefined
  let built: BuiltImage | undefined
  const fn = uniqueFn()
  const used: string[] = [fn.name]

  /** Containers (any state) Docker holds for the functions this test used. */
  const leftovers = async () => {
    const all = await th!.host.docker.listContainers('initless.fn')
    return all.filter((c) => used.includes(c.labels['initless.fn'] ?? ''))
  }

  before(async () => {
    if (process.getuid?.() !== 0 && !isCI) return
    th = await createTestHost()
  })
  after(async () => {
    if (!th) return
    await th.runtimes.docker.discard()
    const left = await leftovers()
    for (const c of left) await th.host.docker.removeContainer(c.id)
    await th.dispose()
    assert.deepEqual(
      left.map((c) => c.name),
      [],
      'no container of this test is left',
    )
  })

  test('first start prepares the checkpoint; stop keeps the container; the next start restores again', async (t) => {
    if (!requireServices(t) || !th) return
    built = await th.host.builder.build(helloNode)
    const copiesBefore = await containerdCopies()
    const first = await th.start('docker', fn, built.image)
    try {
      assert.equal(first.runtime, 'docker')
      assert.equal(first.phases.sandboxMs, 0)
      assert.ok(first.containerId)
      await assertAnswers(first)
      const [template] = await leftovers()
      assert.equal(template?.name, templateName(fn.name, built.image.id))
      assert.equal(template.labels[DOCKER_CHECKPOINT_LABEL], '1')
      assert.equal(template.labels['initless.host'], `test-${th.config.hostId}`)
      assert.equal(template.id, first.containerId)
    } finally {
      await th.stop(first)
    }
    // Stopped, not removed: the container still holds the checkpoint.
    assert.equal(await th.host.docker.containerRunning(first.containerId), false)
    assert.equal((await leftovers()).length, 1)

    for (let i = 0; i < 2; i++) {
      const again: StartedInstance = await th.start('docker', fn, built.image)
      try {
        assert.equal(again.containerId, first.containerId, 'restored into the same template container')
        await assertAnswers(again)
        t.diagnostic(
          `restore ${i + 1}: start ${again.phases.restoreMs.toFixed(0)} ms + ready ${again.phases.readyMs.toFixed(0)} ms`,
        )
      } finally {
        await th.stop(again)
      }
    }
    // containerd left a copy of the checkpoint for each call; stopping removed them.
    assert.deepEqual(
      (await containerdCopies()).filter((d) => !copiesBefore.includes(d)),
      [],
      'containerd checkpoint copies left in /tmp',
    )
  })

  test('a second concurrent start fails clearly and leaves the running instance alone', async (t) => {
    if (!requireServices(t) || !th || !built) return
    const running = await th.start('docker', fn, built.image)
    try {
      await assert.rejects(th.start('docker', fn, built.image), (err: unknown) => {
        assert.ok(isInitlessError(err, 'ERR_RESTORE_FAILED'), String(err))
        assert.match(err.message, /docker runtime serves one instance per function/)
        assert.ok(err.message.includes(running.id), err.message)
        return true
      })
      await assertAnswers(running)
    } finally {
      await th.stop(running)
    }
    // The slot is free again once that instance stopped.
    const next = await th.start('docker', fn, built.image)
    await th.stop(next)
  })

  test('a template removed behind its back is recreated', async (t) => {
    if (!requireServices(t) || !th || !built) return
    const [before] = await leftovers()
    assert.ok(before)
    await th.host.docker.removeContainer(before.id)
    const inst = await th.start('docker', fn, built.image)
    try {
      assert.notEqual(inst.containerId, before.id)
      await assertAnswers(inst)
    } finally {
      await th.stop(inst)
    }
    assert.equal((await leftovers()).length, 1)
  })

  test('the instance manager serves runtime docker jobs, notices a dead container, releases by stopping', async (t) => {
    if (!requireServices(t) || !th || !built) return
    // Policy boot: the manager's prepare() then only builds (no runc bake); the job forces `docker`.
    const managed = uniqueFn('boot')
    used.push(managed.name)
    const image = built
    const registry = createFakeRegistry()
    const hostId = `test-${th.config.hostId}`
    const instances = createInstanceManager({
      hostId,
      stateDir: th.config.INITLESS_STATE_DIR,
      lazyThreshold: th.config.INITLESS_LAZY_THRESHOLD,
      functions: () => [managed],
      registry,
      builder: { build: () => Promise.resolve(image) },
      baker: {} as Baker,
      store: th.host.store,
      docker: th.host.docker,
      sandboxes: th.host.sandboxes,
      runtimes: th.runtimes,
      logger: createSilentLogger(),
      recheckDelayMs: th.config.INITLESS_RECHECK_DELAY,
    })
    const job = (instanceId: string) => ({
      fn: managed.name,
      instanceId,
      traceId: randomUUID(),
      enqueuedAt: Date.now(),
      reason: 'bench' as const,
      runtime: 'docker' as const,
    })
    try {
      const id = `i${randomBytes(6).toString('hex')}`
      assert.ok(await registry.reserve(managed.name, 5, id, hostId))
      const result = await instances.start(job(id))
      assert.equal(result.runtime, 'docker')
      const res = await httpOnce(result.address.host, result.address.port, '/')
      assert.equal(res.status, 200)
      assert.deepEqual(await instances.dead(), [])

      // The container stops behind the manager's back: dead() sees it through Docker.
      const inst = instances.live().find((i) => i.id === id)
      assert.ok(inst?.containerId)
      await th.host.docker.stopContainer(inst.containerId)
      assert.deepEqual(
        (await instances.dead()).map((i) => i.id),
        [id],
      )
      await instances.stop(id, 'dead')

      const id2 = `i${randomBytes(6).toString('hex')}`
      assert.ok(await registry.reserve(managed.name, 5, id2, hostId))
      const again = await instances.start(job(id2))
      assert.equal(again.runtime, 'docker')
      assert.equal((await httpOnce(again.address.host, again.address.port, '/')).status, 200)
      await instances.stop(id2, 'test over')
      // release() stopped the container and kept it for the next restore.
      const kept = (await leftovers()).filter((c) => c.labels['initless.fn'] === managed.name)
      assert.equal(kept.length, 1)
      assert.equal(await th.host.docker.containerRunning(kept[0]!.id), false)
    } finally {
      await instances.stopAll('test over')
    }
  })
})
