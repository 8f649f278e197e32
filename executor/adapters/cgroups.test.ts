import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import {
  ALLOWED_DEVICES,
  applyCgroupWrites,
  applySandboxLimits,
  cgroupDirs,
  cgroupLimitWrites,
  containerCgroupMounts,
  deviceFilterRequest,
  enableV2Controllers,
  ensureCgroupSkeleton,
  keyedCounter,
  parseCgroupLayout,
  prepareCgroupParent,
  readLimitEvents,
  setCpuLimit,
  type CgroupLayout,
} from './cgroups.ts'
import { fakeSandboxHelper } from './sandbox-helper-fake.ts'

// Lines from real /proc/self/mountinfo files: this host (v1, one controller per hierarchy), a
// systemd host (v1 with cpu,cpuacct co-mounted) and a pure v2 host.
const V1 = `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
const V1_SYSTEMD = `25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,pids
`
const V2 = `24 18 0:21 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
28 22 0:25 / /proc/sys/fs/binfmt_misc rw,relatime shared:14 - autofs systemd-1 rw
`

test('parseCgroupLayout: v1 hierarchies, hybrid unified included; v2 has none', () => {
  const root = '/sys/fs/cgroup'
  assert.deepEqual(parseCgroupLayout(V1), {
    v2: false,
    root,
    hierarchies: ['cpu', 'memory', 'systemd', 'unified'],
  })
  assert.deepEqual(parseCgroupLayout(V1_SYSTEMD), { v2: false, root, hierarchies: ['cpu,cpuacct', 'pids'] })
  assert.deepEqual(parseCgroupLayout(V2), { v2: true, root, hierarchies: [] })
})

test("containerCgroupMounts: v1 binds a skeleton then each hierarchy's cgroup dir; v2 one bind", () => {
  const v1 = parseCgroupLayout(V1_SYSTEMD)
  assert.deepEqual(containerCgroupMounts(v1, '/initless/x', '/state/cgroupfs'), [
    { destination: '/sys/fs/cgroup', source: '/state/cgroupfs' },
    { destination: '/sys/fs/cgroup/cpu,cpuacct', source: '/sys/fs/cgroup/cpu,cpuacct/initless/x' },
    { destination: '/sys/fs/cgroup/pids', source: '/sys/fs/cgroup/pids/initless/x' },
  ])
  assert.deepEqual(cgroupDirs(v1, '/initless/x'), [
    '/sys/fs/cgroup/cpu,cpuacct/initless/x',
    '/sys/fs/cgroup/pids/initless/x',
  ])
  const v2 = parseCgroupLayout(V2)
  assert.deepEqual(containerCgroupMounts(v2, '/initless/x', '/state/cgroupfs'), [
    { destination: '/sys/fs/cgroup', source: '/sys/fs/cgroup/initless/x' },
  ])
})

test('ensureCgroupSkeleton: a mount point per hierarchy and links for co-mounted controllers, idempotent', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-cg-'))
  try {
    const skel = join(dir, 'cgroupfs')
    const layout = parseCgroupLayout(V1_SYSTEMD)
    await ensureCgroupSkeleton(layout, skel)
    await ensureCgroupSkeleton(layout, skel)
    assert.deepEqual((await readdir(skel)).sort(), ['cpu', 'cpu,cpuacct', 'cpuacct', 'pids'])
    assert.equal(await readlink(join(skel, 'cpu')), 'cpu,cpuacct')
    assert.ok((await stat(join(skel, 'pids'))).isDirectory())
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test("cgroupLimitWrites: v1 memory (then memory+swap, no swap), pids, deny-all then runc's device list", () => {
  const layout =
    parseCgroupLayout(`${V1_SYSTEMD}31 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
`)
  const writes = cgroupLimitWrites(layout, '/initless/x', { memoryBytes: 256 * 1024 * 1024, pids: 512 })
  assert.ok(writes)
  assert.deepEqual(writes.slice(0, 4), [
    { file: '/sys/fs/cgroup/memory/initless/x/memory.limit_in_bytes', value: '268435456' },
    {
      file: '/sys/fs/cgroup/memory/initless/x/memory.memsw.limit_in_bytes',
      value: '268435456',
      optional: true,
    },
    { file: '/sys/fs/cgroup/pids/initless/x/pids.max', value: '512' },
    { file: '/sys/fs/cgroup/devices/initless/x/devices.deny', value: 'a' },
  ])
  const allowed = writes.slice(4)
  assert.ok(allowed.every((w) => w.file === '/sys/fs/cgroup/devices/initless/x/devices.allow'))
  assert.deepEqual(
    allowed.map((w) => w.value),
    [...ALLOWED_DEVICES],
  )
  // Block devices may be created, never opened; /dev/null may be.
  assert.ok(
    ALLOWED_DEVICES.includes('b *:* m') && !ALLOWED_DEVICES.some((r) => r.startsWith('b') && r.includes('r')),
  )
  assert.ok(ALLOWED_DEVICES.includes('c 1:3 rwm'))
  // A v1 host without a hierarchy a limit needs is an error, not a silently unlimited sandbox.
  assert.throws(
    () => cgroupLimitWrites(parseCgroupLayout(V1), '/initless/x', { memoryBytes: 1, pids: 1 }),
    /no cgroup v1 hierarchy with the (devices|pids) controller/,
  )
})

// A directory laid out like a cgroup v2 mount, as the kernel shows it: the root's available
// controllers and its subtree_control; a child's cgroup.controllers is what its parent enabled.
const ALL_V2 = 'cpuset cpu io memory hugetlb pids rdma misc'

async function fakeV2(files: Record<string, string>): Promise<{ layout: CgroupLayout; root: string }> {
  const root = await mkdtemp(join(tmpdir(), 'initless-cg2-'))
  for (const [path, content] of Object.entries(files)) {
    await mkdir(join(root, path, '..'), { recursive: true })
    await writeFile(join(root, path), content)
  }
  return { layout: { v2: true, root, hierarchies: [] }, root }
}

test('cgroupLimitWrites v2: memory.max, no swap (memory.swap.max 0, if swap is accounted), pids.max', () => {
  const layout: CgroupLayout = { v2: true, root: '/cg', hierarchies: [] }
  assert.deepEqual(cgroupLimitWrites(layout, '/initless/x', { memoryBytes: 256 * 1024 * 1024, pids: 512 }), [
    { file: '/cg/initless/x/memory.max', value: '268435456' },
    { file: '/cg/initless/x/memory.swap.max', value: '0', optional: true },
    { file: '/cg/initless/x/pids.max', value: '512' },
  ])
  assert.deepEqual(deviceFilterRequest(layout, '/initless/x'), {
    op: 'device-filter',
    args: ['/cg/initless/x', ...ALLOWED_DEVICES],
  })
  assert.throws(() => deviceFilterRequest(parseCgroupLayout(V1), '/initless/x'), /for cgroup v2/)
  // The instance's /sys/fs/cgroup is its own cgroup's directory, wherever the host mounts v2.
  assert.deepEqual(containerCgroupMounts(layout, '/initless/x', '/state/cgroupfs'), [
    { destination: '/sys/fs/cgroup', source: '/cg/initless/x' },
  ])
})

test('enableV2Controllers: cpu, memory and pids enabled top-down where missing, nothing rewritten', async () => {
  const cases: {
    name: string
    parent: string
    files: Record<string, string>
    /** subtree_control contents afterwards (a fake file holds what was last written). */
    expect?: Record<string, string>
    error?: RegExp
  }[] = [
    {
      name: 'fresh host: the root and /initless both enable all three',
      parent: '/initless',
      files: {
        'cgroup.controllers': ALL_V2,
        'cgroup.subtree_control': '',
        'initless/cgroup.controllers': 'cpu memory pids',
        'initless/cgroup.subtree_control': '',
      },
      expect: {
        'cgroup.subtree_control': '+cpu +memory +pids',
        'initless/cgroup.subtree_control': '+cpu +memory +pids',
      },
    },
    {
      name: 'systemd host: the root has them; /initless lacks two',
      parent: '/initless',
      files: {
        'cgroup.controllers': ALL_V2,
        'cgroup.subtree_control': 'cpuset cpu io memory pids\n',
        'initless/cgroup.controllers': 'cpuset cpu io memory pids\n',
        'initless/cgroup.subtree_control': 'memory\n',
      },
      expect: {
        'cgroup.subtree_control': 'cpuset cpu io memory pids\n',
        'initless/cgroup.subtree_control': '+cpu +pids',
      },
    },
    {
      name: 'a second run: all enabled, nothing written',
      parent: '/initless',
      files: {
        'cgroup.controllers': ALL_V2,
        'cgroup.subtree_control': 'cpu memory pids',
        'initless/cgroup.controllers': 'cpu memory pids',
        'initless/cgroup.subtree_control': 'pids memory cpu',
      },
      expect: {
        'cgroup.subtree_control': 'cpu memory pids',
        'initless/cgroup.subtree_control': 'pids memory cpu',
      },
    },
    {
      name: 'a deeper parent: every ancestor in turn',
      parent: '/a/initless',
      files: {
        'cgroup.controllers': ALL_V2,
        'cgroup.subtree_control': 'cpu memory pids',
        'a/cgroup.controllers': 'cpu memory pids',
        'a/cgroup.subtree_control': '',
        'a/initless/cgroup.controllers': 'cpu memory pids',
        'a/initless/cgroup.subtree_control': 'cpu',
      },
      expect: {
        'cgroup.subtree_control': 'cpu memory pids',
        'a/cgroup.subtree_control': '+cpu +memory +pids',
        'a/initless/cgroup.subtree_control': '+memory +pids',
      },
    },
    {
      name: 'a hybrid host: memory and pids belong to v1 hierarchies',
      parent: '/initless',
      files: { 'cgroup.controllers': 'cpu hugetlb', 'cgroup.subtree_control': '' },
      error: /controller\(s\) memory, pids not available in .* \(cgroup\.controllers: cpu hugetlb\)/,
    },
  ]
  for (const c of cases) {
    const { layout, root } = await fakeV2(c.files)
    try {
      if (c.error) {
        await assert.rejects(enableV2Controllers(layout, c.parent), c.error, c.name)
        assert.equal(
          await readFile(join(root, 'cgroup.subtree_control'), 'utf8'),
          '',
          `${c.name}: nothing written`,
        )
        continue
      }
      await enableV2Controllers(layout, c.parent)
      for (const [file, content] of Object.entries(c.expect ?? {}))
        assert.equal(await readFile(join(root, file), 'utf8'), content, `${c.name}: ${file}`)
    } finally {
      await rm(root, { recursive: true, force: true })
    }
  }
})

test('prepareCgroupParent v2: creates the parent and enables its controllers; setCpuLimit writes cpu.max', async () => {
  const { layout, root } = await fakeV2({
    'cgroup.controllers': ALL_V2,
    'cgroup.subtree_control': '',
    // What the kernel lists in a new child once the root enables them.
    'initless/cgroup.controllers': 'cpu memory pids',
    'initless/cgroup.subtree_control': '',
  })
  try {
    await prepareCgroupParent(layout, '/initless')
    assert.equal(await readFile(join(root, 'initless/cgroup.subtree_control'), 'utf8'), '+cpu +memory +pids')
    await mkdir(join(root, 'initless/x'))
    await setCpuLimit(layout, '/initless/x', 0.5)
    assert.equal(await readFile(join(root, 'initless/x/cpu.max'), 'utf8'), '50000 100000')
    // No v1 files on v2 (cpuset, clone_children).
    assert.deepEqual((await readdir(join(root, 'initless'))).sort(), [
      'cgroup.controllers',
      'cgroup.subtree_control',
      'x',
    ])
  } finally {
    await rm(root, { recursive: true, force: true })
  }
})

test('applySandboxLimits: v1 writes only; v2 writes then the device filter, and refuses without the helper', async () => {
  const limits = { memoryBytes: 64 * 1024 * 1024, pids: 100 }
  // v2 with the helper: one write request (triples), then the filter for the cgroup's directory.
  const v2: CgroupLayout = { v2: true, root: '/cg', hierarchies: [] }
  const withHelper = fakeSandboxHelper()
  await applySandboxLimits(v2, '/initless/x', limits, withHelper.helper)
  assert.deepEqual(withHelper.requests, [
    {
      op: 'write',
      args: [
        '/cg/initless/x/memory.max',
        '67108864',
        '0',
        '/cg/initless/x/memory.swap.max',
        '0',
        '1',
        '/cg/initless/x/pids.max',
        '100',
        '0',
      ],
    },
    { op: 'device-filter', args: ['/cg/initless/x', ...ALLOWED_DEVICES] },
  ])
  // v2 without the helper: nothing written, a clear error (the sandbox manager never asks for it).
  const { layout, root } = await fakeV2({ 'initless/x/pids.max': 'max' })
  try {
    await assert.rejects(
      applySandboxLimits(layout, '/initless/x', limits),
      /only the sandbox helper attaches/,
    )
    assert.equal(await readFile(join(root, 'initless/x/pids.max'), 'utf8'), 'max')
    assert.deepEqual(await readdir(join(root, 'initless/x')), ['pids.max'])
  } finally {
    await rm(root, { recursive: true, force: true })
  }
  // v2 through node's fs (applyCgroupWrites without a helper): memory.swap.max only where it
  // exists (swap accounting is a kernel option).
  for (const swap of [true, false]) {
    const fake = await fakeV2(
      swap ? { 'initless/x/memory.swap.max': 'max' } : { 'initless/x/pids.max': 'max' },
    )
    try {
      await applyCgroupWrites(cgroupLimitWrites(fake.layout, '/initless/x', limits))
      const dir = join(fake.root, 'initless/x')
      assert.equal(await readFile(join(dir, 'memory.max'), 'utf8'), '67108864')
      assert.equal(await readFile(join(dir, 'pids.max'), 'utf8'), '100')
      assert.equal(
        await readFile(join(dir, 'memory.swap.max'), 'utf8').catch(() => 'absent'),
        swap ? '0' : 'absent',
      )
    } finally {
      await rm(fake.root, { recursive: true, force: true })
    }
  }
  // v1: the device list is written, the helper gets no filter request.
  const v1 = parseCgroupLayout(`${V1_SYSTEMD}31 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
`)
  const onV1 = fakeSandboxHelper()
  await applySandboxLimits(v1, '/initless/x', limits, onV1.helper)
  assert.deepEqual(
    onV1.requests.map((r) => r.op),
    ['write'],
  )
  const written: readonly string[] = onV1.requests[0]?.args ?? []
  assert.ok(written.includes('/sys/fs/cgroup/devices/initless/x/devices.deny'))
})

test('readLimitEvents: OOM kills and refused forks from v1 and v2 files; missing counts 0', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'initless-limit-events-'))
  try {
    const v1: CgroupLayout = { v2: false, root: dir, hierarchies: ['memory', 'pids', 'cpu,cpuacct'] }
    await mkdir(join(dir, 'memory/initless/a'), { recursive: true })
    await mkdir(join(dir, 'pids/initless/a'), { recursive: true })
    await writeFile(
      join(dir, 'memory/initless/a/memory.oom_control'),
      'oom_kill_disable 0\nunder_oom 0\noom_kill 2\n',
    )
    await writeFile(join(dir, 'pids/initless/a/pids.events'), 'max 17\n')
    assert.deepEqual(await readLimitEvents(v1, '/initless/a'), { oomKills: 2, pidsMax: 17 })
    assert.deepEqual(await readLimitEvents(v1, '/initless/gone'), { oomKills: 0, pidsMax: 0 })

    const v2: CgroupLayout = { v2: true, root: join(dir, 'v2'), hierarchies: [] }
    await mkdir(join(dir, 'v2/initless/b'), { recursive: true })
    await writeFile(
      join(dir, 'v2/initless/b/memory.events'),
      'low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n',
    )
    await writeFile(join(dir, 'v2/initless/b/pids.events'), 'max 0\n')
    assert.deepEqual(await readLimitEvents(v2, '/initless/b'), { oomKills: 1, pidsMax: 0 })
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('keyedCounter reads one key, never a prefix of another', () => {
  assert.equal(keyedCounter('oom 3\noom_kill 1\n', 'oom'), 3)
  assert.equal(keyedCounter('oom_kill_disable 0\noom_kill 5', 'oom_kill'), 5)
  assert.equal(keyedCounter('', 'max'), 0)
})
