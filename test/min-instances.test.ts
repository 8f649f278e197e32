/**
 * scaling.minInstances with the real executor and gateway: the executor's reaper starts the
 * minimum without any request, the first request finds it warm, and a scale to zero is topped up.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { requireServices } from './support/integration.ts'
import { parseServerTiming, startE2eStack, type E2eStack } from './support/e2e.ts'

const FIXTURES = join(import.meta.dirname, 'fixtures', 'functions')

describe('minInstances', () => {
  let stack: E2eStack | undefined
  let functionsDir = ''
  const stateDir = `/var/lib/initless-test/min-${randomBytes(4).toString('hex')}`
  after(async () => {
    await stack?.stop()
    await rm(stateDir, { recursive: true, force: true })
    if (functionsDir) await rm(functionsDir, { recursive: true, force: true })
  })

  test('the executor keeps one instance up: no request starts it, a scale to zero brings it back', async (t) => {
    if (!requireServices(t)) return
    functionsDir = await mkdtemp(join(tmpdir(), 'initless-min-'))
    await cp(join(FIXTURES, 'py-ok'), join(functionsDir, 'py-min'), { recursive: true })
    const manifest = join(functionsDir, 'py-min', 'function.yaml')
    await writeFile(
      manifest,
      (await readFile(manifest, 'utf8')).replace('  idleTimeout: 2s', '  idleTimeout: 2s\n  minInstances: 1'),
    )
    stack = await startE2eStack({
      env: {
        INITLESS_FUNCTIONS_DIR: functionsDir,
        INITLESS_STATE_DIR: stateDir,
        INITLESS_REAP_INTERVAL: '300ms',
      },
      prepareTimeoutMs: 300_000,
    })
    const [first] = await stack.waitForInstances(
      'py-min',
      (l) => l.length === 1 && l[0]?.state === 'ready',
      60_000,
    )
    assert.ok(first)

    const res = await stack.request('GET', '/fn/py-min/work')
    assert.equal(res.status, 200)
    assert.ok(parseServerTiming(res.headers['server-timing']).has('warm'), 'served by the kept instance')

    // Idle past its 2 s timeout: the reaper keeps it (the minimum).
    await new Promise((r) => setTimeout(r, 2500))
    assert.deepEqual(
      (await stack.instances('py-min')).map((i) => i.id),
      [first.id],
    )

    const scaled = await stack.admin('POST', '/functions/py-min/scale', { instances: 0 })
    assert.equal(scaled.status, 202)
    const [again] = await stack.waitForInstances(
      'py-min',
      (l) => l.length === 1 && l[0]?.state === 'ready' && l[0].id !== first.id,
      30_000,
    )
    assert.ok(again)
    assert.equal((await stack.request('GET', '/fn/py-min/work')).status, 200)
    const started = stack.executor.records().filter((r) => r.msg === 'min instance started')
    assert.equal(started.length, 2, stack.logs())
  })
})
