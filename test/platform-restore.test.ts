import assert from 'node:assert/strict'
import { test } from 'node:test'
import { loadExecutorConfig } from '../executor/config.ts'
import { createHostAdapters, createSandboxes, createSelfTest } from '../executor/wiring.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { hostResources, leakedSince, NO_LEAKS } from './support/leaks.ts'
import { requireServices } from './support/integration.ts'

const config = loadExecutorConfig(process.env)

test('runc + CRIU: run in a network namespace, checkpoint, eager and lazy restore answer over HTTP', async (t) => {
  if (!requireServices(t)) return
  const adapters = createHostAdapters(config, createSilentLogger())
  const selfTest = createSelfTest(config, adapters, createSandboxes(config, adapters))
  const opts = { runcRoot: config.INITLESS_RUNC_ROOT, stateDir: config.INITLESS_STATE_DIR }
  const before = hostResources(opts)
  const steps = await selfTest()
  const failed = steps.filter((s) => !s.ok)
  assert.deepEqual(failed, [], `failed steps: ${JSON.stringify(failed, null, 2)}`)
  assert.deepEqual(
    steps.map((s) => s.name),
    [
      'compile probe server',
      'runc run in its own network namespace',
      'checkpoint with CRIU',
      'eager restore answers',
      'lazy restore answers',
    ],
  )
  assert.deepEqual(leakedSince(before, hostResources(opts)), NO_LEAKS)
})
