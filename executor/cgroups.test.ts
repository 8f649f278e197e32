import assert from 'node:assert/strict'
import { mkdtemp, readdir, readlink, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import {
  ALLOWED_DEVICES,
  cgroupDirs,
  cgroupLimitWrites,
  containerCgroupMounts,
  ensureCgroupSkeleton,
  parseCgroupLayout,
} from './cgroups.ts'

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
  assert.deepEqual(parseCgroupLayout(V1), { v2: false, hierarchies: ['cpu', 'memory', 'systemd', 'unified'] })
  assert.deepEqual(parseCgroupLayout(V1_SYSTEMD), { v2: false, hierarchies: ['cpu,cpuacct', 'pids'] })
  assert.deepEqual(parseCgroupLayout(V2), { v2: true, hierarchies: [] })
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

test("cgroupLimitWrites: v1 memory (then memory+swap, no swap), pids, deny-all then runc's device list; none for v2", () => {
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
  assert.equal(
    cgroupLimitWrites(parseCgroupLayout(V2), '/initless/x', { memoryBytes: 1, pids: 1 }),
    undefined,
  )
  // A v1 host without a hierarchy a limit needs is an error, not a silently unlimited sandbox.
  assert.throws(
    () => cgroupLimitWrites(parseCgroupLayout(V1), '/initless/x', { memoryBytes: 1, pids: 1 }),
    /no cgroup v1 hierarchy with the (devices|pids) controller/,
  )
})
