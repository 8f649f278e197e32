import assert from 'node:assert/strict'
import { Writable } from 'node:stream'
import { test } from 'node:test'
import { pino } from 'pino'
import { isInitlessError } from '../../shared/errors.ts'
import { fakeRunner } from '../adapters/exec-fake.ts'
import type { Firewall } from '../adapters/firewall.ts'
import { applyNetworkPolicy } from './network-policy.ts'

function capture() {
  const lines: Record<string, unknown>[] = []
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>)
      done()
    },
  })
  return { logger: pino(stream), lines }
}

const fake = (over: Partial<Firewall>): Firewall => ({
  apply: async () => {},
  remove: async () => ({ removed: true }),
  status: async () => ({ applied: true, problems: [] }),
  ...over,
})
const base = { run: fakeRunner().run, bridge: 'initless0', subnet: '10.213.0.0/16' }

test('a policy that cannot be applied stops the start with ERR_NETWORK_POLICY and the cause', async () => {
  const { logger } = capture()
  const err = await applyNetworkPolicy({
    ...base,
    logger,
    firewall: fake({ apply: () => Promise.reject(new Error('iptables-restore: line 3 failed')) }),
  }).catch((e: unknown) => e)
  assert.ok(isInitlessError(err) && err.code === 'ERR_NETWORK_POLICY', String(err))
  assert.match((err as Error).message, /bridge initless0 .*provision\.sh.*line 3 failed/)
})

test('applied, then removed or kept (said in the log); a failing removal is logged, not thrown', async () => {
  for (const [outcome, msg] of [
    [{ removed: true }, 'network policy removed'],
    [{ removed: false, reason: '2 other instance(s) still on initless0' }, 'network policy kept'],
  ] as const) {
    const { logger, lines } = capture()
    const policy = await applyNetworkPolicy({
      ...base,
      logger,
      firewall: fake({ remove: async () => outcome }),
    })
    assert.ok(lines.some((l) => l.msg === 'network policy applied' && typeof l.ms === 'number'))
    await policy.remove()
    assert.equal(lines.at(-1)?.msg, msg)
  }
  const { logger, lines } = capture()
  const policy = await applyNetworkPolicy({
    ...base,
    logger,
    firewall: fake({ remove: () => Promise.reject(new Error('iptables-save: not found')) }),
  })
  await policy.remove()
  assert.equal(lines.at(-1)?.msg, 'network policy not removed')
  assert.equal(lines.at(-1)?.err, 'iptables-save: not found')
})
