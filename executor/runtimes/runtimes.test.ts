import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import type { RuntimeKind } from '../../shared/contracts.ts'
import type { RestorePolicy } from '../../shared/manifest.ts'
import type { Criu } from '../adapters/criu.ts'
import type { Runc } from '../adapters/runc.ts'
import type { Sandbox, SandboxManager } from '../sandbox/sandbox.ts'
import { chooseRuntime, restoreIntoSandbox } from './runtimes.ts'

const MiB = 1024 * 1024
const THRESHOLD = 64 * MiB

const cases: Array<[RestorePolicy, number | undefined, number, RuntimeKind]> = [
  // auto: lazy from the threshold up, eager below it.
  ['auto', 10 * MiB, THRESHOLD, 'eager'],
  ['auto', THRESHOLD - 1, THRESHOLD, 'eager'],
  ['auto', THRESHOLD, THRESHOLD, 'lazy'],
  ['auto', 3 * 1024 * MiB, THRESHOLD, 'lazy'],
  ['auto', 0, THRESHOLD, 'eager'],
  ['auto', 0, 0, 'lazy'],
  ['auto', 10 * MiB, Number.POSITIVE_INFINITY, 'eager'],
  // An explicit policy wins over the size.
  ['lazy', 1, THRESHOLD, 'lazy'],
  ['lazy', 3 * 1024 * MiB, THRESHOLD, 'lazy'],
  ['eager', 3 * 1024 * MiB, THRESHOLD, 'eager'],
  ['eager', 1, THRESHOLD, 'eager'],
  ['boot', 3 * 1024 * MiB, THRESHOLD, 'boot'],
  ['boot', 1, THRESHOLD, 'boot'],
  // No snapshot: boot, whatever the policy.
  ['auto', undefined, THRESHOLD, 'boot'],
  ['lazy', undefined, THRESHOLD, 'boot'],
  ['eager', undefined, THRESHOLD, 'boot'],
  ['boot', undefined, THRESHOLD, 'boot'],
]

for (const [policy, bytes, threshold, expected] of cases) {
  test(`policy ${policy}, snapshot ${bytes ?? 'none'}, threshold ${threshold} -> ${expected}`, () => {
    assert.equal(chooseRuntime(policy, bytes, threshold), expected)
  })
}

/** restoreIntoSandbox's adapters, recording what they are asked to do (eager restores only). */
function recordingDeps(calls: string[]): { runc: Runc; criu: Criu; sandboxes: SandboxManager } {
  const unexpected = (what: string) => () => Promise.reject(new Error(`unexpected ${what}`))
  return {
    runc: {
      run: unexpected('runc run'),
      checkpoint: unexpected('runc checkpoint'),
      restore: async (id, opts) => {
        calls.push(`runc restore ${id}`)
        await writeFile(opts.pidFile, '4242\n')
      },
      kill: unexpected('runc kill'),
      delete: unexpected('runc delete'),
      state: unexpected('runc state'),
      list: unexpected('runc list'),
    },
    criu: {
      version: unexpected('criu version'),
      restore: async (req) => {
        calls.push(`criu restore --cgroup-root ${req.cgroupRoot}`)
        await writeFile(req.pidFile, '4242\n')
        return 1
      },
      writeRestoreConfig: async (path, opts) =>
        void calls.push(`config ${path} lazy=${opts.lazy} cgroup-root=${opts.cgroupRoot}`),
      startLazyPages: unexpected('criu lazy-pages'),
      descriptors: unexpected('criu descriptors'),
    },
    sandboxes: {
      prepare: unexpected('prepare'),
      restorePath: unexpected('restorePath'),
      workDir: unexpected('workDir'),
      limitCpu: async (sb) => void calls.push(`limit cpu ${sb.id}`),
      fillSecrets: unexpected('fillSecrets'),
      setFrozen: unexpected('setFrozen'),
      usage: unexpected('usage'),
      limitEvents: unexpected('limitEvents'),
      destroy: unexpected('destroy'),
    },
  }
}

for (const direct of [false, true]) {
  test(`restoreIntoSandbox: ${direct ? 'criu restore' : 'runc restore'} puts the process in the sandbox's cgroup`, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'restore-into-'))
    t.after(() => rm(dir, { recursive: true, force: true }))
    const sb: Sandbox = {
      id: 'fn-1',
      fn: 'fn',
      dir,
      bundle: join(dir, 'bundle'),
      rootfs: join(dir, 'bundle', 'rootfs'),
      criuWorkDir: dir,
      criuConfig: join(dir, 'criu.conf'),
      logFile: join(dir, 'output.log'),
      pidFile: join(dir, 'pid'),
      netns: { name: 'initless-fn-1', path: '/var/run/netns/initless-fn-1', ip: '10.0.0.2' },
      lowers: [],
      cpus: 0.5,
      ...(direct ? { direct: { externalMounts: [] } } : {}),
    }
    const calls: string[] = []
    const restored = await restoreIntoSandbox(recordingDeps(calls), sb, join(dir, 'images'), false)
    assert.equal(restored.pid, 4242)
    assert.deepEqual(
      calls,
      direct
        ? ['criu restore --cgroup-root /initless/fn-1', 'limit cpu fn-1']
        : [
            `config ${sb.criuConfig} lazy=false cgroup-root=/initless/fn-1`,
            'runc restore fn-1',
            'limit cpu fn-1',
          ],
    )
  })
}
