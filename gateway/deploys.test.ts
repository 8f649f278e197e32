import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { contextOf, createFakeDeployQueue } from '../shared/deploy-queue-fake.ts'
import type { DeployJobData } from '../shared/deploy-queue.ts'
import { isInitlessError } from '../shared/errors.ts'
import { createFakeFunctionRegistry } from '../shared/function-registry-fake.ts'
import { createDeploys } from './deploys.ts'

function setup(
  opts: { fail?: (job: DeployJobData) => boolean; hold?: (job: DeployJobData) => Promise<void> } = {},
) {
  const functions = createFakeFunctionRegistry()
  const queue = createFakeDeployQueue(functions, opts)
  let clock = 1000
  const deploys = createDeploys({
    functions,
    queue,
    maxContextBytes: 1 << 20,
    deployTimeoutMs: 1000,
    now: () => (clock += 10),
  })
  return { functions, jobs: queue.jobs, deploys }
}

const V1 = { 'function.yaml': 'port: 8080\n', Dockerfile: 'FROM x\n', 'app.js': 'v1' }

describe('deploys', () => {
  test('a new function is built and activated; the same content again is a no-op that says so', async () => {
    const { deploys, jobs, functions } = setup()
    const first = await deploys.deploy('hello', await contextOf(V1))
    assert.equal(first.status, 'deployed')
    assert.equal(first.previous, null)
    assert.equal(jobs.length, 1)
    assert.equal((await functions.get('hello'))?.active, first.version)
    const again = await deploys.deploy('hello', await contextOf(V1))
    assert.deepEqual(
      [again.status, again.version, again.built, again.baked],
      ['unchanged', first.version, false, false],
    )
    assert.equal(jobs.length, 1, 'no job for an unchanged function')
  })

  test('live fields apply without a build or a bake', async () => {
    const { deploys, jobs, functions } = setup()
    const first = await deploys.deploy('hello', await contextOf(V1))
    const r = await deploys.deploy(
      'hello',
      await contextOf({
        ...V1,
        'function.yaml': 'port: 8080\nscaling:\n  maxInstances: 9\ntimeouts:\n  request: 5s\n',
      }),
    )
    assert.equal(r.status, 'updated')
    assert.equal(r.version, first.version)
    assert.equal(jobs.length, 1)
    const active = (await functions.get('hello'))?.versions.find((v) => v.version === first.version)
    assert.equal(active?.manifest.scaling.maxInstances, 9)
    assert.equal(active?.manifest.timeouts.request, 5000)
  })

  test('an invalid manifest or context fails before anything is stored', async () => {
    const { deploys, functions, jobs } = setup()
    await assert.rejects(
      deploys.deploy('hello', await contextOf({ ...V1, 'function.yaml': 'port: nope\n' })),
      (err: unknown) =>
        isInitlessError(err, 'ERR_DEPLOY_FAILED') &&
        (err.details.problem as { step: string }).step === 'manifest' &&
        /port/.test(err.message),
    )
    await assert.rejects(
      deploys.deploy('hello', await contextOf({ Dockerfile: 'FROM x\n' })),
      (err: unknown) => isInitlessError(err, 'ERR_DEPLOY_FAILED') && /function.yaml/.test(err.message),
    )
    await assert.rejects(deploys.deploy('hello', Buffer.from('garbage')), (err: unknown) =>
      isInitlessError(err, 'ERR_DEPLOY_CONTEXT_INVALID'),
    )
    assert.equal(await functions.get('hello'), undefined)
    assert.deepEqual(functions.contextKeys(), [])
    assert.equal(jobs.length, 0)
  })

  test('a failed deploy leaves the active version; rollback activates a kept one without a job', async () => {
    let failNext = false
    const { deploys, functions, jobs } = setup({ fail: () => failNext })
    const v1 = await deploys.deploy('hello', await contextOf(V1))
    const v2 = await deploys.deploy('hello', await contextOf({ ...V1, 'app.js': 'v2' }))
    assert.equal(v2.previous, v1.version)
    failNext = true
    await assert.rejects(
      deploys.deploy('hello', await contextOf({ ...V1, 'app.js': 'v3' })),
      (err: unknown) =>
        isInitlessError(err, 'ERR_DEPLOY_FAILED') &&
        (err.details.problem as { output: string }).output === 'boom',
    )
    assert.equal((await functions.get('hello'))?.active, v2.version, 'still serving v2')
    const jobsBefore = jobs.length
    const back = await deploys.rollback('hello')
    assert.deepEqual([back.version, back.previous], [v1.version, v2.version])
    assert.equal(jobs.length, jobsBefore, 'rollback runs no build or bake')
    const forward = await deploys.rollback('hello', v2.version)
    assert.equal(forward.version, v2.version)
    await assert.rejects(deploys.rollback('hello', 'abcdef'), (err: unknown) =>
      isInitlessError(err, 'ERR_VERSION_NOT_FOUND'),
    )
    await assert.rejects(deploys.rollback('nope'), (err: unknown) =>
      isInitlessError(err, 'ERR_FUNCTION_NOT_FOUND'),
    )
    // Deploying v1's content again re-activates the kept version.
    const again = await deploys.deploy('hello', await contextOf(V1))
    assert.deepEqual([again.status, again.version], ['activated', v1.version])
    assert.equal(jobs.length, jobsBefore)
  })

  test('delete removes the function and its contexts', async () => {
    const { deploys, functions } = setup()
    await deploys.deploy('hello', await contextOf(V1))
    assert.equal(await deploys.remove('hello'), true)
    assert.equal(await deploys.remove('hello'), false)
    assert.equal(await functions.get('hello'), undefined)
    assert.deepEqual(functions.contextKeys(), [])
  })
  test('one change of a function at a time: a second deploy or a rollback meanwhile is a 409', async () => {
    let release!: () => void
    const held = new Promise<void>((r) => (release = r))
    let holding = false
    const { deploys, functions } = setup({
      hold: (job) => (holding && job.fn === 'hello' ? held : Promise.resolve()),
    })
    const v1 = await deploys.deploy('hello', await contextOf(V1))
    holding = true
    const slow = deploys.deploy('hello', await contextOf({ ...V1, 'app.js': 'v2' }))
    const refused = (err: unknown) =>
      isInitlessError(err, 'ERR_CHANGE_IN_PROGRESS') &&
      /another change is running: a deploy, since/.test(err.message) &&
      !/\[/.test(err.message) &&
      err.details.retryAfterS === 5
    await assert.rejects(deploys.deploy('hello', await contextOf({ ...V1, 'app.js': 'v3' })), refused)
    await assert.rejects(deploys.rollback('hello', v1.version), refused)
    // Another function is not held up.
    assert.equal((await deploys.deploy('other', await contextOf(V1))).status, 'deployed')
    release()
    const v2 = await slow
    assert.equal((await functions.get('hello'))?.active, v2.version)
    // Released: the next change runs, and so does one after a failure.
    assert.equal((await deploys.rollback('hello')).version, v1.version)
    holding = false
    await assert.rejects(deploys.deploy('hello', Buffer.from('garbage')))
    assert.equal((await deploys.rollback('hello', v2.version)).version, v2.version)
  })
})
