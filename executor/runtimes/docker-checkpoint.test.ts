import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { InitlessError } from '../../shared/errors.ts'
import { createSilentLogger } from '../../shared/logger.ts'
import { createFakeDocker, type FakeDocker } from '../adapters/docker-fake.ts'
import type { DockerEngine } from '../adapters/docker.ts'
import { createCopySweeper } from './containerd-copies.ts'
import {
  createDockerCheckpointRuntime,
  DOCKER_CHECKPOINT_LABEL,
  type DockerCheckpointRuntime,
} from './docker-checkpoint.ts'
import { FAKE_IMAGE, startFakeFunction, type FakeFunction } from './function-fake.ts'
import type { StartedInstance } from './runtimes.ts'

let fn: FakeFunction
before(async () => (fn = await startFakeFunction()))
after(() => fn.close())

function runtimeOn(
  fail?: (method: keyof DockerEngine, arg: unknown) => Error | undefined,
  lingeringCheckpointWaitMs?: number,
) {
  const docker = createFakeDocker({ fail, logs: 'last words' })
  const sweeps: number[] = []
  const copies = createCopySweeper({
    logger: createSilentLogger(),
    remove: async (since) => (sweeps.push(since), 0),
  })
  const runtime = createDockerCheckpointRuntime({
    docker: docker.docker,
    logger: createSilentLogger(),
    settleMs: 0,
    copies,
    lingeringCheckpointWaitMs,
  })
  return { docker, runtime, sweeps }
}

let n = 0
function start(runtime: DockerCheckpointRuntime, readiness = '2s'): Promise<StartedInstance> {
  return runtime.start({
    instanceId: `d${++n}`,
    fn: fn.def({ readinessTimeout: readiness }),
    image: FAKE_IMAGE,
    hostLabel: 'h1',
    prepare: () => Promise.reject(new Error('no sandbox')),
  })
}

const templates = (d: FakeDocker) =>
  [...d.containers.values()].filter((c) => c.launch.labels[DOCKER_CHECKPOINT_LABEL] === '1')
const count = (d: FakeDocker, method: keyof DockerEngine) => d.calls.filter((c) => c.method === method).length

describe('docker checkpoint runtime over a fake Docker engine', () => {
  const cases: {
    name: string
    fail?: (method: keyof DockerEngine, arg: unknown) => Error | undefined
    /** What happens between the first instance's stop and the second start. */
    between?: (d: FakeDocker) => void
    code?: string
    /** Template containers created over the two starts. */
    creates?: number
  }[] = [
    { name: 'a template is prepared once and restored again after a stop', creates: 1 },
    {
      name: 'a vanished template is made again',
      between: (d) => d.containers.clear(),
      creates: 2,
    },
    {
      name: 'preparing the template fails its checkpoint: the container goes',
      fail: (m) => (m === 'checkpointContainer' ? new Error('criu dump failed') : undefined),
      code: 'ERR_BAKE_CHECKPOINT_FAILED',
    },
  ]
  for (const c of cases) {
    test(c.name, async () => {
      const on = runtimeOn(c.fail)
      const docker = on.docker
      if (c.code) {
        await assert.rejects(start(on.runtime), (err: InitlessError) => err.code === c.code)
        assert.deepEqual(templates(docker), [], 'nothing left')
        return
      }
      const first = await start(on.runtime)
      assert.equal(first.runtime, 'docker')
      assert.equal(first.ip, '127.0.0.1')
      // One instance per function: its checkpoint lives in one container.
      await assert.rejects(start(on.runtime), (err: InitlessError) => {
        assert.equal(err.code, 'ERR_RESTORE_FAILED')
        assert.match(err.message, /one instance per function/)
        return true
      })
      await on.runtime.stop(first)
      assert.equal(templates(docker).length, 1, 'a stop keeps the template')
      assert.equal(templates(docker)[0]!.running, false)
      c.between?.(docker)
      const second = await start(on.runtime)
      assert.equal(count(docker, 'createContainer'), c.creates)
      await on.runtime.stop(second)
      assert.ok(on.sweeps.length >= 1, "containerd's copies are swept after stops")
      await on.runtime.discard()
      assert.deepEqual(templates(docker), [])
    })
  }

  test('a template that does not restore is removed, and the next start makes a new one', async () => {
    let failRestore = true
    const on = runtimeOn((m) =>
      m === 'startFromCheckpoint' && failRestore
        ? new InitlessError('ERR_COMMAND_FAILED', 'restore failed')
        : undefined,
    )
    await assert.rejects(start(on.runtime), (err: InitlessError) => {
      assert.equal(err.code, 'ERR_RESTORE_FAILED')
      assert.match(err.message, /docker restore failed.*\n?.*last words/s)
      return true
    })
    assert.deepEqual(templates(on.docker), [])
    failRestore = false
    const inst = await start(on.runtime)
    assert.equal(count(on.docker, 'createContainer'), 2)
    await on.runtime.stop(inst)
    await on.runtime.discard()
  })

  // moby#42900, as Docker 20.10 words it.
  const lingering = () =>
    new InitlessError(
      'ERR_COMMAND_FAILED',
      'docker: start c1 from checkpoint initless: (HTTP code 500) server error - failed to upload ' +
        'checkpoint to containerd: commit failed: content sha256:2552e81a: already exists',
    )

  test("a start refused while containerd still holds the checkpoint's copy is tried again", async () => {
    let refusals = 2
    const on = runtimeOn((m) => (m === 'startFromCheckpoint' && refusals-- > 0 ? lingering() : undefined))
    const inst = await start(on.runtime)
    assert.equal(count(on.docker, 'startFromCheckpoint'), 3)
    assert.equal(count(on.docker, 'createContainer'), 1, 'the template is kept, not re-made')
    assert.ok(inst.phases.restoreMs < 50, 'the restore phase times the call that succeeded')
    await on.runtime.stop(inst)
    await on.runtime.discard()
  })

  test('a copy that is never collected fails the restore once the wait is over', async () => {
    const on = runtimeOn((m) => (m === 'startFromCheckpoint' ? lingering() : undefined), 300)
    const t0 = performance.now()
    await assert.rejects(start(on.runtime), (err: InitlessError) => {
      assert.equal(err.code, 'ERR_RESTORE_FAILED')
      assert.match(err.message, /already exists/)
      return true
    })
    assert.ok(performance.now() - t0 < 2_000, 'the wait is bounded')
    assert.ok(count(on.docker, 'startFromCheckpoint') >= 3)
    assert.deepEqual(templates(on.docker), [])
  })

  test('a restored template that never gets ready is removed: ERR_RESTORE_FAILED', async () => {
    const on = runtimeOn()
    const first = await start(on.runtime, '500ms')
    await on.runtime.stop(first)
    fn.setReady(false)
    try {
      await assert.rejects(
        start(on.runtime, '500ms'),
        (err: InitlessError) => err.code === 'ERR_RESTORE_FAILED',
      )
    } finally {
      fn.setReady(true)
    }
    assert.deepEqual(templates(on.docker), [])
  })
})
