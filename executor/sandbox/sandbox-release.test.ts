/**
 * SandboxManager's release of what it took: a prepare that fails at any step, and a destroy one of
 * whose steps fails, leave no namespace, mount, cgroup, address or directory behind. Fake cgroup
 * roots (temp dirs), a recording network and command runner; nothing touches the host.
 */
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { InitlessError } from '../../shared/errors.ts'
import type { CgroupLayout } from '../adapters/cgroups.ts'
import { fakeRunner } from '../adapters/exec-fake.ts'
import type { NetworkManager } from '../adapters/network.ts'
import { createMounter } from '../adapters/rootfs.ts'
import { createRunc } from '../adapters/runc.ts'
import { fakeSandboxHelper } from '../adapters/sandbox-helper-fake.ts'
import { sandboxRequest } from './sandbox-fake.ts'
import { createSandboxManager } from './sandbox.ts'

type Step = 'netns' | 'mount' | 'cgroup' | 'runc-delete' | 'umount' | 'none'

interface Case {
  readonly name: string
  /** The step that fails, in prepare (or in destroy for runc-delete and umount). */
  readonly fails: Step
  readonly in: 'prepare' | 'destroy'
}

const cases: Case[] = [
  { name: 'prepare: the namespace cannot be made', fails: 'netns', in: 'prepare' },
  { name: 'prepare: the overlay does not mount', fails: 'mount', in: 'prepare' },
  { name: 'prepare: the cgroup cannot be made', fails: 'cgroup', in: 'prepare' },
  { name: 'destroy: runc delete fails, every other step still runs', fails: 'runc-delete', in: 'destroy' },
  { name: 'destroy: umount fails, every other step still runs', fails: 'umount', in: 'destroy' },
  { name: 'destroy: nothing fails', fails: 'none', in: 'destroy' },
]

for (const c of cases) {
  test(c.name, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'initless-sandbox-release-'))
    try {
      // cgroup v1 with one directory per hierarchy: no helper needed, except to make it fail.
      const root = join(dir, 'cgroup')
      const hierarchies = ['cpu', 'devices', 'memory', 'pids']
      for (const h of hierarchies) await mkdir(join(root, h), { recursive: true })
      const layout: CgroupLayout = { v2: false, root, hierarchies }
      const created: string[] = []
      const destroyed: string[] = []
      const network: NetworkManager = {
        ensureBridge: async () => {},
        async create(name, ip) {
          if (c.fails === 'netns')
            throw new InitlessError('ERR_SANDBOX_SETUP_FAILED', 'RTNETLINK: File exists')
          created.push(name)
          return { name, path: `/var/run/netns/${name}`, ip }
        },
        destroy: async (name) => void destroyed.push(name),
        list: async () => [],
      }
      const released: string[] = []
      const { run, calls } = fakeRunner((call) => {
        if (c.fails === 'mount' && call.cmd === 'mount') return new Error('mount: wrong fs type')
        if (c.fails === 'umount' && call.cmd === 'umount') return new Error('umount: target is busy')
        if (c.fails === 'runc-delete' && call.args.includes('delete')) return new Error('runc delete: exit 1')
        return undefined
      })
      // Only the cgroup's creation goes through the helper on v1 (a write of its dirs).
      const { helper } = fakeSandboxHelper((req) =>
        c.fails === 'cgroup' && req.op === 'mkdir' ? 13 : undefined,
      )
      const sandboxes = createSandboxManager({
        stateDir: join(dir, 'state'),
        network,
        ips: { allocate: () => '10.251.0.2', release: (ip) => void released.push(ip) },
        mounter: createMounter({ run }),
        runc: createRunc({ run, root: join(dir, 'runc') }),
        helper: c.fails === 'cgroup' ? helper : undefined,
        readLayout: async () => layout,
      })
      const cgroupsOf = async () =>
        (await Promise.all(hierarchies.map((h) => readdir(join(root, h, 'initless')).catch(() => [])))).flat()

      if (c.in === 'prepare') {
        await assert.rejects(sandboxes.prepare(sandboxRequest('sb1', false)))
      } else {
        const sb = await sandboxes.prepare(sandboxRequest('sb1', false))
        assert.deepEqual(created, ['initless-sb1'])
        assert.ok((await cgroupsOf()).includes('sb1'))
        const destroying = sandboxes.destroy(sb)
        if (c.fails === 'none') await destroying
        else
          await assert.rejects(destroying, (err: AggregateError) => {
            assert.match(err.message, /destroying sandbox sb1 left 1 problem/)
            return true
          })
      }
      // Whatever failed, all it took is given back.
      assert.deepEqual(released, ['10.251.0.2'], 'the address')
      assert.deepEqual(destroyed, ['initless-sb1'], 'the namespace')
      assert.ok(
        calls.some((x) => x.cmd === 'umount' && x.args.at(-1)?.endsWith('sb1/bundle/rootfs')),
        'the rootfs was unmounted',
      )
      assert.deepEqual(await cgroupsOf(), [], 'the cgroup')
      assert.equal(existsSync(join(dir, 'state', 'instances', 'sb1')), false, 'the sandbox dir')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
}
