/**
 * SandboxManager.prepare on fake cgroup file systems (temp dirs laid out like /sys/fs/cgroup) with
 * a recording sandbox helper: which sandboxes are ready for a direct `criu restore`, and what their
 * cgroup gets first. Commands (mount, runc) go to a recording runner; nothing touches the host.
 */
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { ALLOWED_DEVICES, type CgroupLayout } from '../adapters/cgroups.ts'
import { fakeRunner } from '../adapters/exec-fake.ts'
import { IpAllocator, type NetworkManager } from '../adapters/network.ts'
import { createMounter } from '../adapters/rootfs.ts'
import { formatRestorePath } from './restore-path.ts'
import { createRunc } from '../adapters/runc.ts'
import type { HelperRequest, SandboxHelper } from '../adapters/sandbox-helper.ts'
import { fakeSandboxHelper } from '../adapters/sandbox-helper-fake.ts'
import { sandboxRequest } from './sandbox-fake.ts'
import { createSandboxManager } from './sandbox.ts'

const network: NetworkManager = {
  ensureBridge: async () => {},
  create: async (name, ip) => ({ name, path: `/var/run/netns/${name}`, ip }),
  destroy: async () => {},
  list: async () => [],
}

/** A cgroup v2 root as a fresh host shows it (controllers available, none enabled for children). */
async function fakeV2Root(dir: string): Promise<CgroupLayout> {
  const root = join(dir, 'cgroup')
  await mkdir(join(root, 'initless'), { recursive: true })
  await writeFile(join(root, 'cgroup.controllers'), 'cpuset cpu io memory hugetlb pids rdma misc\n')
  await writeFile(join(root, 'cgroup.subtree_control'), '')
  // What the kernel lists in /initless once the root enables them.
  await writeFile(join(root, 'initless/cgroup.controllers'), 'cpu memory pids\n')
  await writeFile(join(root, 'initless/cgroup.subtree_control'), '')
  return { v2: true, root, hierarchies: [] }
}

/** A cgroup v1 root with one directory per hierarchy. */
async function fakeV1Root(dir: string): Promise<CgroupLayout> {
  const root = join(dir, 'cgroup')
  const hierarchies = ['cpu', 'devices', 'memory', 'pids']
  for (const h of hierarchies) await mkdir(join(root, h), { recursive: true })
  return { v2: false, root, hierarchies }
}

/** A sandbox manager on the fake root, its commands recorded; `calls` for what runc was asked. */
function managerOn(dir: string, layout: CgroupLayout, helper: SandboxHelper | undefined) {
  const { run, calls } = fakeRunner()
  const sandboxes = createSandboxManager({
    stateDir: join(dir, 'state'),
    network,
    ips: new IpAllocator('10.251.0.0/24'),
    mounter: createMounter({ run }),
    runc: createRunc({ run, root: join(dir, 'runc') }),
    helper,
    withoutHelper: 'sandbox helper off',
    readLayout: async () => layout,
  })
  return { sandboxes, calls }
}

/** The probe, and the cgroup made through the helper, as every v2 prepare with a helper starts. */
const CHECK: HelperRequest = { op: 'device-filter-check', args: [...ALLOWED_DEVICES] }
const MKDIR_V2: HelperRequest = { op: 'mkdir', args: ['<root>/initless/sb1'] }

test('prepare: direct restores where the cgroup gets what runc would set, runc restore elsewhere', async () => {
  const cases: {
    name: string
    layout: (dir: string) => Promise<CgroupLayout>
    /** The fake helper's answer, or no helper at all. */
    helper?: (req: HelperRequest) => Error | number | undefined
    forRestore: boolean
    direct: boolean
    restorePath: string
    /** The helper requests of one prepare, `<root>` for the fake root. */
    requests: HelperRequest[]
  }[] = [
    {
      name: 'v2 with the eBPF device filter: limits written, filter attached',
      layout: fakeV2Root,
      helper: () => undefined,
      forRestore: true,
      direct: true,
      restorePath: 'direct (cgroup v2, eBPF device filter)',
      requests: [
        CHECK,
        MKDIR_V2,
        {
          op: 'write',
          args: [
            '<root>/initless/sb1/memory.max',
            '134217728',
            '0',
            '<root>/initless/sb1/memory.swap.max',
            '0',
            '1',
            '<root>/initless/sb1/pids.max',
            '64',
            '0',
          ],
        },
        { op: 'device-filter', args: ['<root>/initless/sb1', ...ALLOWED_DEVICES] },
      ],
    },
    {
      name: 'v2, the kernel refuses the filter: runc sets the limits',
      layout: fakeV2Root,
      helper: (req) => (req.op === 'device-filter-check' ? 1 : undefined),
      forRestore: true,
      direct: false,
      restorePath: 'runc restore (cgroup v2, eBPF device filter unavailable)',
      requests: [CHECK, MKDIR_V2],
    },
    {
      name: 'v2 without the helper',
      layout: fakeV2Root,
      forRestore: true,
      direct: false,
      restorePath: 'runc restore (cgroup v2, sandbox helper off)',
      requests: [],
    },
    {
      name: 'v2, a bake (runc starts the container): no limits, no probe',
      layout: fakeV2Root,
      helper: () => undefined,
      forRestore: false,
      direct: false,
      restorePath: 'direct (cgroup v2, eBPF device filter)',
      requests: [MKDIR_V2],
    },
    {
      name: 'v1: device list written, no filter',
      layout: fakeV1Root,
      helper: () => undefined,
      forRestore: true,
      direct: true,
      restorePath: 'direct (cgroup v1)',
      requests: [
        {
          op: 'mkdir',
          args: ['cpu', 'devices', 'memory', 'pids'].map((h) => `<root>/${h}/initless/sb1`),
        },
        {
          op: 'write',
          args: [
            ['<root>/memory/initless/sb1/memory.limit_in_bytes', '134217728', '0'],
            ['<root>/memory/initless/sb1/memory.memsw.limit_in_bytes', '134217728', '1'],
            ['<root>/pids/initless/sb1/pids.max', '64', '0'],
            ['<root>/devices/initless/sb1/devices.deny', 'a', '0'],
            ...ALLOWED_DEVICES.map((r) => ['<root>/devices/initless/sb1/devices.allow', r, '0']),
          ].flat(),
        },
      ],
    },
  ]
  for (const c of cases) {
    const dir = await mkdtemp(join(tmpdir(), 'initless-sandbox-'))
    try {
      const layout = await c.layout(dir)
      const fake = c.helper ? fakeSandboxHelper(c.helper) : undefined
      const { sandboxes, calls } = managerOn(dir, layout, fake?.helper)
      const sb = await sandboxes.prepare(sandboxRequest('sb1', c.forRestore))
      assert.equal(sb.direct !== undefined, c.direct, c.name)
      if (sb.direct) {
        // CRIU maps the container's bind mounts, the cgroup one among them, to their sources.
        assert.ok(
          sb.direct.externalMounts.some((m) => m.key === '/sys/fs/cgroup'),
          c.name,
        )
      }
      const root = layout.root
      const unroot = (req: HelperRequest) => ({
        op: req.op,
        args: (req.args as readonly string[]).map((a) => a.replaceAll(root, '<root>')),
      })
      assert.deepEqual((fake?.requests ?? []).map(unroot), c.requests, c.name)
      assert.equal(formatRestorePath(await sandboxes.restorePath()), c.restorePath, c.name)
      if (layout.v2) {
        // The parent enables what the sandbox's limits need, the root first.
        for (const at of ['', 'initless'])
          assert.equal(await readFile(join(root, at, 'cgroup.subtree_control'), 'utf8'), '+cpu +memory +pids')
      }
      if (!fake) {
        // Without the helper the cgroup is made with node's fs and holds no limits (runc sets them).
        assert.deepEqual(await readdir(join(root, 'initless/sb1')), [])
      }
      const spec = JSON.parse(await readFile(join(sb.bundle, 'config.json'), 'utf8')) as {
        linux: { cgroupsPath: string }
      }
      assert.equal(spec.linux.cgroupsPath, '/initless/sb1')
      await sandboxes.destroy(sb)
      assert.equal(existsSync(sb.dir), false, c.name)
      // runc holds the container only where runc restores it.
      assert.equal(
        calls.some((call) => call.args.includes('delete')),
        !c.direct,
        `${c.name}: runc delete`,
      )
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }
})

test('restorePath: probed once while the helper answers, again after it did not', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-sandbox-'))
  try {
    const layout = await fakeV2Root(dir)
    let died = true
    const fake = fakeSandboxHelper(() => {
      if (!died) return undefined
      died = false
      return new Error('helper exited')
    })
    const { sandboxes } = managerOn(dir, layout, fake.helper)
    assert.equal((await sandboxes.restorePath()).direct, false)
    assert.equal((await sandboxes.restorePath()).direct, true)
    assert.equal((await sandboxes.restorePath()).direct, true)
    assert.equal(fake.requests.length, 2)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('a disk size puts the overlay on a tmpfs of that size; a bake copies its upper dir off it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-sandbox-'))
  try {
    const { sandboxes, calls } = managerOn(dir, await fakeV1Root(dir), undefined)
    const sb = await sandboxes.prepare({ ...sandboxRequest('sb1', false), diskBytes: 16 * 1024 * 1024 })
    const layer = join(sb.dir, 'layer')
    const mounts = calls.filter((c) => c.cmd === 'mount').map((c) => c.args.join(' '))
    assert.deepEqual(mounts.length, 2)
    assert.equal(mounts[0], `-t tmpfs -o nosuid,nodev,size=16777216,mode=0700 tmpfs ${layer}`)
    assert.match(mounts[1] ?? '', new RegExp(`upperdir=${layer}/upper,workdir=${layer}/work,`))
    // No tmpfs really mounted here (the fake runner): the layer shares the sandbox dir's file system.
    assert.deepEqual(await sandboxes.limitEvents(sb), { oomKills: 0, pidsMax: 0, diskFull: false })
    const keep = join(dir, 'kept-upper')
    await sandboxes.destroy(sb, { keepUpperAt: keep })
    const copies = calls.filter((c) => c.cmd === 'cp').map((c) => c.args)
    assert.deepEqual(copies, [['-a', '-T', join(layer, 'upper'), keep]])
    assert.equal(existsSync(sb.dir), false)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('without a disk size the upper dir stays a directory of the sandbox, renamed for a bake', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-sandbox-'))
  try {
    const { sandboxes, calls } = managerOn(dir, await fakeV1Root(dir), undefined)
    const sb = await sandboxes.prepare(sandboxRequest('sb1', false))
    assert.deepEqual(
      calls.filter((c) => c.cmd === 'mount').map((c) => c.args[1]),
      ['overlay'],
    )
    const keep = join(dir, 'kept-upper')
    await sandboxes.destroy(sb, { keepUpperAt: keep })
    assert.ok(existsSync(keep))
    assert.equal(calls.filter((c) => c.cmd === 'cp').length, 0)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})
