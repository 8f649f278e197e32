import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { contextOf, createFakeDeployQueue } from '../shared/deploy-queue-fake.ts'
import { createFakeFunctionRegistry } from '../shared/function-registry-fake.ts'
import { createDeploys } from './deploys.ts'
import type { Problem } from './problem.ts'
import { ADMIN_MAX_BODY } from './routes/admin.ts'
import { createTestGateway, testManifest } from './test-support.ts'

const TOKEN = 'a-test-token-of-some-length'
const auth = { authorization: `Bearer ${TOKEN}` }

async function setup(maxContextBytes = 1 << 20, onDeleted?: (fn: string) => Promise<void>) {
  const functions = createFakeFunctionRegistry()
  const queue = createFakeDeployQueue(functions)
  const deploys = createDeploys({ functions, queue, maxContextBytes, deployTimeoutMs: 1000 })
  const g = await createTestGateway({
    manifests: [testManifest('alpha')],
    options: { adminToken: TOKEN },
    lifecycle: { deploys, functions, maxContextBytes, ...(onDeleted ? { onDeleted } : {}) },
  })
  after(() => g.close())
  const put = (name: string, body: Buffer, headers: Record<string, string> = auth) =>
    g.app.request(`/admin/functions/${name}`, {
      method: 'PUT',
      headers: { ...headers, 'content-type': 'application/x-tar' },
      body,
    })
  return { g, functions, put }
}

const problem = async (res: Response) => {
  assert.equal(res.headers.get('content-type'), 'application/problem+json')
  return (await res.json()) as Problem & Record<string, unknown>
}

describe('admin lifecycle routes', () => {
  test('deploy, versions, rollback, delete', async () => {
    const { g, put } = await setup()
    const v1 = await put('hello', await contextOf({ 'function.yaml': 'port: 80\n', 'app.js': '1' }))
    assert.equal(v1.status, 201)
    const first = (await v1.json()) as { version: string; status: string }
    assert.equal(first.status, 'deployed')
    const same = await put('hello', await contextOf({ 'function.yaml': 'port: 80\n', 'app.js': '1' }))
    assert.equal(same.status, 200)
    assert.equal(((await same.json()) as { status: string }).status, 'unchanged')
    const v2 = (await (
      await put('hello', await contextOf({ 'function.yaml': 'port: 80\n', 'app.js': '2' }))
    ).json()) as {
      version: string
    }
    const versions = await g.app.request('/admin/functions/hello/versions', { headers: auth })
    const body = (await versions.json()) as {
      active: string
      versions: { version: string; isActive: boolean }[]
    }
    assert.equal(body.active, v2.version)
    assert.deepEqual(
      body.versions.map((v) => [v.version, v.isActive]),
      [
        [v2.version, true],
        [first.version, false],
      ],
    )
    const list = await g.app.request('/admin/deployments', { headers: auth })
    const deployments = (
      (await list.json()) as { deployments: { fn: string; active: string; versions: unknown[] }[] }
    ).deployments
    assert.deepEqual(
      deployments.map((d) => [d.fn, d.active, d.versions.length]),
      [['hello', v2.version, 2]],
    )
    const back = await g.app.request('/admin/functions/hello/rollback', {
      method: 'POST',
      headers: auth,
      body: '',
    })
    assert.equal(back.status, 200)
    assert.equal(((await back.json()) as { version: string }).version, first.version)
    const bad = await g.app.request('/admin/functions/hello/rollback', {
      method: 'POST',
      headers: auth,
      body: '{nope',
    })
    assert.equal((await problem(bad)).code, 'ERR_GATEWAY_BAD_REQUEST')
    const del = await g.app.request('/admin/functions/hello', { method: 'DELETE', headers: auth })
    assert.equal(del.status, 200)
    const again = await g.app.request('/admin/functions/hello', { method: 'DELETE', headers: auth })
    assert.equal((await problem(again)).code, 'ERR_FUNCTION_NOT_FOUND')
    const gone = await g.app.request('/admin/functions/hello/versions', { headers: auth })
    assert.equal(gone.status, 404)
  })

  test("a delete calls onDeleted (the function's keys are revoked) before it answers", async () => {
    const deleted: string[] = []
    const { g, put } = await setup(1 << 20, async (fn) => {
      await new Promise((r) => setTimeout(r, 10))
      deleted.push(fn)
    })
    await put('hello', await contextOf({ 'function.yaml': 'port: 80\n', 'app.js': '1' }))
    assert.deepEqual(deleted, [])
    const del = await g.app.request('/admin/functions/hello', { method: 'DELETE', headers: auth })
    assert.equal(del.status, 200)
    assert.deepEqual(deleted, ['hello'])
    await g.app.request('/admin/functions/hello', { method: 'DELETE', headers: auth })
    assert.deepEqual(deleted, ['hello'], 'not for a function that does not exist')
  })

  test('bad input is refused with problem+json and stores nothing', async () => {
    const { put, functions } = await setup(16384)
    const invalid = await put('hello', await contextOf({ 'function.yaml': 'port: nope\nbogus: 1\n' }))
    assert.equal(invalid.status, 422)
    const p = await problem(invalid)
    assert.equal(p.code, 'ERR_DEPLOY_FAILED')
    assert.equal(p.step, 'manifest')
    assert.match(p.detail, /port/)
    assert.match(p.detail, /bogus/)
    const big = await put('hello', Buffer.alloc(32768))
    assert.equal(big.status, 413)
    assert.equal((await problem(big)).code, 'ERR_GATEWAY_BODY_TOO_LARGE')
    const garbage = await put('hello', Buffer.from('not a tar'))
    assert.equal((await problem(garbage)).code, 'ERR_DEPLOY_CONTEXT_INVALID')
    const empty = await put('hello', Buffer.alloc(0))
    assert.equal((await problem(empty)).code, 'ERR_DEPLOY_CONTEXT_INVALID')
    const name = await put('Bad_Name', await contextOf({ 'function.yaml': 'port: 80\n' }))
    assert.equal((await problem(name)).code, 'ERR_FUNCTION_NAME_INVALID')
    const noAuth = await put('hello', await contextOf({ 'function.yaml': 'port: 80\n' }), {})
    assert.equal(noAuth.status, 401)
    assert.deepEqual(await functions.list(), [])
  })

  test("a deploy's upload may pass the admin API's body limit; other admin bodies may not", async () => {
    const { g, put } = await setup()
    const big = await contextOf({ 'function.yaml': 'port: 80\n', 'blob.bin': 'x'.repeat(ADMIN_MAX_BODY * 2) })
    assert.ok(big.length > ADMIN_MAX_BODY)
    assert.equal((await put('hello', big)).status, 201)
    const rollback = await g.app.request('/admin/functions/hello/rollback', {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ version: 'x'.repeat(ADMIN_MAX_BODY) }),
    })
    assert.equal(rollback.status, 413)
    assert.equal((await problem(rollback)).code, 'ERR_GATEWAY_BODY_TOO_LARGE')
  })
})
