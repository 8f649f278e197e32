import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { InitlessError } from '../../shared/errors.ts'
import { isProcessAlive } from '../adapters/process.ts'
import { createFakeCriu } from '../adapters/criu-fake.ts'
import { createFakeDocker } from '../adapters/docker-fake.ts'
import { createFakeRunc } from '../adapters/runc-fake.ts'
import { createFakeSandboxes, sandboxRequest } from '../sandbox/sandbox-fake.ts'
import type { Snapshot } from '../snapshots/snapshot-store.ts'
import { FAKE_IMAGE, fakeSnapshot, startFakeFunction, type FakeFunction } from './function-fake.ts'
import { createBootRuntime, createRuncRestoreRuntime } from './runtimes.ts'

let fn: FakeFunction
let root: string
before(async () => {
  fn = await startFakeFunction()
  root = await mkdtemp(join(tmpdir(), 'initless-runtimes-'))
})
after(async () => {
  await fn.close()
  await rm(root, { recursive: true, force: true })
})

const boom = (what: string) => new InitlessError('ERR_COMMAND_FAILED', `${what}: exit 1`)

interface RestoreCase {
  readonly name: string
  readonly lazy: boolean
  /** The sandbox is ready for a direct `criu restore` (else `runc restore`). */
  readonly direct?: boolean
  readonly pooled?: boolean
  readonly failPrepare?: boolean
  readonly failRestore?: boolean
  readonly failVerify?: boolean
  readonly notReady?: boolean
  /** Expected: the error code, or the instance's shape. */
  readonly code?: string
  readonly restoredBy?: 'criu' | 'runc'
}

const restoreCases: RestoreCase[] = [
  { name: 'eager, direct criu restore', lazy: false, restoredBy: 'criu' },
  { name: 'eager through runc restore', lazy: false, direct: false, restoredBy: 'runc' },
  { name: 'lazy starts its lazy-pages daemon', lazy: true, restoredBy: 'criu' },
  { name: 'lazy with a pooled sandbox and daemon', lazy: true, pooled: true, restoredBy: 'criu' },
  { name: 'sandbox prepare fails', lazy: true, failPrepare: true, code: 'ERR_SANDBOX_SETUP_FAILED' },
  { name: 'criu restore fails', lazy: true, failRestore: true, code: 'ERR_RESTORE_FAILED' },
  { name: 'runc restore fails', lazy: false, direct: false, failRestore: true, code: 'ERR_RESTORE_FAILED' },
  { name: 'snapshot files corrupt', lazy: false, failVerify: true, code: 'ERR_RESTORE_FAILED' },
  { name: 'never ready (readiness timeout)', lazy: false, notReady: true, code: 'ERR_RESTORE_FAILED' },
  {
    name: 'lazy, snapshot files corrupt: its daemon goes too',
    lazy: true,
    failVerify: true,
    code: 'ERR_RESTORE_FAILED',
  },
  { name: 'lazy, never ready: its daemon goes too', lazy: true, notReady: true, code: 'ERR_RESTORE_FAILED' },
]

describe('runc restore runtimes (lazy, eager) over fake runc, CRIU and sandboxes', () => {
  for (const c of restoreCases) {
    test(c.name, async () => {
      const criu = createFakeCriu({ restore: () => (c.failRestore ? boom('criu restore') : undefined) })
      const runc = createFakeRunc((op) =>
        c.failRestore && op === 'restore' ? boom('runc restore') : undefined,
      )
      const sb = createFakeSandboxes({ root, direct: c.direct ?? true })
      const runtime = createRuncRestoreRuntime({
        runc: runc.runc,
        criu: criu.criu,
        sandboxes: sb.sandboxes,
        lazy: c.lazy,
        verify: async () => {
          if (c.failVerify) throw new InitlessError('ERR_SNAPSHOT_CORRUPT', 'pages-1.img is missing')
        },
      })
      const id = `i-${c.name.replace(/\W+/g, '-')}`
      const def = fn.def({ readinessTimeout: '300ms' })
      const snapshot: Snapshot = fakeSnapshot(def.name, 1 << 20)
      const pooled = c.pooled
        ? await runtime.prime!(
            await sb.sandboxes.prepare({ ...sandboxRequest(id, true), fn: def.name }),
            snapshot,
          )
        : undefined
      fn.setReady(!c.notReady)
      try {
        const started = runtime.start({
          instanceId: id,
          fn: def,
          image: FAKE_IMAGE,
          snapshot,
          ...(pooled ? { pooled } : {}),
          hostLabel: 'h1',
          prepare: async () => {
            if (c.failPrepare)
              throw new InitlessError('ERR_SANDBOX_SETUP_FAILED', 'ip: RTNETLINK answers: File exists')
            return sb.sandboxes.prepare({ ...sandboxRequest(id, true), fn: def.name })
          },
        })
        if (c.code) {
          await assert.rejects(started, (err: InitlessError) => err.code === c.code)
          // Whatever failed, nothing is left: no sandbox, no lazy-pages daemon.
          assert.deepEqual(sb.live(), [])
          // A killed daemon exits at once; an orphaned one would sleep on for a minute.
          await Promise.race([
            Promise.all(criu.daemons.map((d) => d.exited)),
            new Promise((r) => setTimeout(r, 2000)),
          ])
          for (const d of criu.daemons)
            assert.equal(isProcessAlive(d.pid), false, 'the lazy-pages daemon was killed')
          return
        }
        const inst = await started
        assert.equal(inst.runtime, c.lazy ? 'lazy' : 'eager')
        assert.equal(inst.pooled, c.pooled === true)
        assert.equal(inst.ip, '127.0.0.1')
        assert.equal(inst.pid, process.pid)
        assert.equal(inst.snapshotBytes, 1 << 20)
        assert.deepEqual(sb.live(), [id])
        assert.deepEqual(sb.limited, [id], 'the CPU limit is applied once CRIU is done')
        assert.equal(criu.restores.length, c.restoredBy === 'criu' ? 1 : 0)
        assert.equal(runc.calls.filter((x) => x.op === 'restore').length, c.restoredBy === 'runc' ? 1 : 0)
        if (c.restoredBy === 'runc')
          assert.deepEqual(
            criu.configs.map((x) => x.lazy),
            [c.lazy],
          )
        // Lazy: one daemon, the pool's when pooled, and it serves this instance. Eager: none.
        assert.equal(criu.daemons.length, c.lazy ? 1 : 0)
        assert.equal(inst.lazyDaemon?.pid, criu.daemons[0]?.pid)
        if (c.pooled) assert.equal(sb.requests.length, 1, 'a pooled start prepares no sandbox')
      } finally {
        fn.setReady(true)
        criu.cleanup()
      }
    })
  }
})

const bootCases: { name: string; ready: boolean; failRun?: boolean; code?: string }[] = [
  { name: 'boot answers', ready: true },
  {
    name: 'boot never ready: container removed, its logs in the error',
    ready: false,
    code: 'ERR_INSTANCE_NOT_READY',
  },
  { name: 'docker run fails', ready: true, failRun: true, code: 'ERR_COMMAND_FAILED' },
]

describe('boot runtime over a fake Docker engine', () => {
  for (const c of bootCases) {
    test(c.name, async () => {
      const docker = createFakeDocker({
        logs: 'Traceback: ImportError',
        fail: (m) => (c.failRun && m === 'runContainer' ? boom('docker run') : undefined),
      })
      const runtime = createBootRuntime({ docker: docker.docker })
      fn.setReady(c.ready)
      try {
        const started = runtime.start({
          instanceId: 'b1',
          fn: fn.def({ readinessTimeout: '300ms' }),
          image: FAKE_IMAGE,
          hostLabel: 'h1',
          prepare: () => Promise.reject(new Error('boot prepares no sandbox')),
        })
        if (c.code) {
          await assert.rejects(started, (err: InitlessError) => {
            assert.equal(err.code, c.code)
            if (c.code === 'ERR_INSTANCE_NOT_READY') assert.match(err.message, /ImportError/)
            return true
          })
          assert.equal(docker.containers.size, 0)
          return
        }
        const inst = await started
        assert.equal(inst.runtime, 'boot')
        assert.equal(inst.pooled, false)
        assert.ok(inst.containerId && docker.containers.get(inst.containerId)?.running)
        const launch = docker.containers.get(inst.containerId)!.launch
        assert.equal(launch.labels['initless.instance'], 'b1')
        assert.equal(launch.labels['initless.host'], 'h1')
      } finally {
        fn.setReady(true)
      }
    })
  }
})
