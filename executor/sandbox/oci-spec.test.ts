import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import {
  buildOciSpec,
  criuExternalMounts,
  DEFAULT_CAPABILITIES,
  parseImageUser,
  type OciSpecInput,
} from './oci-spec.ts'

const input: OciSpecInput = {
  hostname: 'hello',
  rootfs: '/state/sandboxes/abc/rootfs',
  args: ['node', 'server.js'],
  env: ['PATH=/usr/bin:/bin', 'A=1'],
  cwd: '/app',
  uid: 1000,
  gid: 50,
  netnsPath: '/var/run/netns/initless-abc',
  emptyDir: '/state/empty',
  cgroupsPath: '/initless/abc',
  cgroupMounts: [
    { destination: '/sys/fs/cgroup', source: '/state/cgroupfs' },
    { destination: '/sys/fs/cgroup/memory', source: '/sys/fs/cgroup/memory/initless/abc' },
  ],
  memoryBytes: 256 * 1024 * 1024,
  cpus: 0.5,
  pids: 4096,
}

// The spec is a plain JSON document; read it through a loose type.
interface Spec {
  process: {
    user: { uid: number; gid: number }
    args: string[]
    env: string[]
    cwd: string
    noNewPrivileges: boolean
    terminal: boolean
    capabilities: Record<string, string[]>
    rlimits?: unknown
  }
  root: { path: string; readonly: boolean }
  hostname: string
  mounts: Array<{ destination: string; type: string; source: string; options?: string[] }>
  annotations: Record<string, string>
  linux: {
    cgroupsPath: string
    resources: {
      memory: { limit: number; swap: number }
      cpu: { quota: number; period: number }
      pids: { limit: number }
      devices: unknown[]
    }
    namespaces: Array<{ type: string; path?: string }>
  }
}

const spec = (over: Partial<OciSpecInput> = {}) => buildOciSpec({ ...input, ...over }) as unknown as Spec

describe('buildOciSpec', () => {
  test('the process runs as given, without new privileges', () => {
    const s = spec()
    assert.deepEqual(s.process.user, { uid: 1000, gid: 50 })
    assert.deepEqual(s.process.args, ['node', 'server.js'])
    assert.deepEqual(s.process.env, ['PATH=/usr/bin:/bin', 'A=1'])
    assert.equal(s.process.cwd, '/app')
    assert.equal(s.process.noNewPrivileges, true)
    assert.equal(s.process.terminal, false)
    assert.equal(s.process.rlimits, undefined)
    assert.deepEqual(s.root, { path: '/state/sandboxes/abc/rootfs', readonly: false })
    assert.equal(s.hostname, 'hello')
  })

  test("Docker's default capabilities in every set", () => {
    const caps = spec().process.capabilities
    assert.deepEqual(Object.keys(caps).sort(), ['bounding', 'effective', 'permitted'])
    for (const set of Object.values(caps)) assert.deepEqual(set, [...DEFAULT_CAPABILITIES])
    assert.ok(!DEFAULT_CAPABILITIES.includes('CAP_SYS_ADMIN' as never))
  })

  test('joins the network namespace by path and creates the others', () => {
    assert.deepEqual(spec().linux.namespaces, [
      { type: 'pid' },
      { type: 'network', path: '/var/run/netns/initless-abc' },
      { type: 'ipc' },
      { type: 'uts' },
      { type: 'mount' },
    ])
  })

  test("no host bind mounts but the empty read-only mask and the container's own cgroup", () => {
    const binds = spec().mounts.filter((m) => m.type === 'bind')
    assert.deepEqual(
      binds.map((m) => [m.destination, m.source]),
      [
        ['/sys/firmware', '/state/empty'],
        ['/sys/fs/cgroup', '/state/cgroupfs'],
        ['/sys/fs/cgroup/memory', '/sys/fs/cgroup/memory/initless/abc'],
      ],
    )
    for (const m of binds) assert.ok(m.options?.includes('ro'), m.destination)
  })

  test('no CPU limit in the spec when cpus is omitted (a restore gets it afterwards)', () => {
    const { cpus: _cpus, ...rest } = input
    const s = buildOciSpec(rest) as unknown as Spec
    assert.equal(s.linux.resources.cpu, undefined)
    assert.deepEqual(s.linux.resources.memory, { limit: 256 * 1024 * 1024, swap: 256 * 1024 * 1024 })
  })

  test('Docker-masked /proc directories are read-only, files are masked', () => {
    const linux = buildOciSpec(input).linux as { maskedPaths: string[]; readonlyPaths: string[] }
    for (const dir of ['/proc/acpi', '/proc/asound', '/proc/scsi']) {
      assert.ok(linux.readonlyPaths.includes(dir), dir)
      assert.ok(!linux.maskedPaths.includes(dir), dir)
    }
    assert.ok(linux.maskedPaths.includes('/proc/kcore'))
    assert.ok(linux.maskedPaths.includes('/proc/keys'))
  })

  const limits: Array<[number, number]> = [
    [0.5, 50_000],
    [1, 100_000],
    [2, 200_000],
    [0.333, 33_300],
  ]
  for (const [cpus, quota] of limits) {
    test(`cgroup limits for cpus ${cpus}: quota ${quota} per 100000 us`, () => {
      const s = spec({ cpus })
      assert.equal(s.linux.cgroupsPath, '/initless/abc')
      assert.deepEqual(s.linux.resources.cpu, { quota, period: 100_000 })
      // Swap equal to memory: no swap beyond the limit.
      assert.deepEqual(s.linux.resources.memory, { limit: 256 * 1024 * 1024, swap: 256 * 1024 * 1024 })
      assert.deepEqual(s.linux.resources.pids, { limit: 4096 })
      assert.deepEqual(s.linux.resources.devices, [{ allow: false, access: 'rwm' }])
    })
  }

  test('org.criu.config is annotated only when criuConfig is given', () => {
    assert.deepEqual(spec().annotations, {})
    assert.deepEqual(spec({ criuConfig: '' }).annotations, {})
    assert.deepEqual(spec({ criuConfig: '/state/sandboxes/abc/criu.conf' }).annotations, {
      'org.criu.config': '/state/sandboxes/abc/criu.conf',
    })
  })

  test('the spec does not share arrays with its input', () => {
    const args = ['a']
    const s = buildOciSpec({ ...input, args }) as unknown as Spec
    s.process.args.push('b')
    assert.deepEqual(args, ['a'])
  })
})

describe('parseImageUser', () => {
  const valid: Array<[string | undefined, { uid: number; gid: number }]> = [
    [undefined, { uid: 0, gid: 0 }],
    ['', { uid: 0, gid: 0 }],
    ['0', { uid: 0, gid: 0 }],
    ['1000', { uid: 1000, gid: 1000 }],
    ['1000:50', { uid: 1000, gid: 50 }],
    ['65534:65534', { uid: 65534, gid: 65534 }],
  ]
  for (const [user, expected] of valid) {
    test(`${JSON.stringify(user)} -> ${expected.uid}/${expected.gid}`, () => {
      assert.deepEqual(parseImageUser(user), expected)
    })
  }

  for (const user of ['nobody', 'node:node', '1000:staff', '1000:', ':50', '-1', ' 1000']) {
    test(`'${user}' throws`, () => {
      assert.throws(() => parseImageUser(user), {
        message: `image user '${user}' is not numeric (uid[:gid]); set USER to a numeric id`,
      })
    })
  }
})

test('buildOciSpec: no tmpfs or cgroup mounts (CRIU restores a tmpfs by running tar); /sys/firmware masked by an empty bind', () => {
  const spec = buildOciSpec(input) as unknown as {
    mounts: { destination: string; type: string; source: string }[]
  }
  assert.deepEqual(
    spec.mounts.filter((m) => m.type === 'tmpfs' || m.type === 'cgroup'),
    [],
  )
  assert.deepEqual(
    spec.mounts.find((m) => m.destination === '/sys/firmware'),
    {
      destination: '/sys/firmware',
      type: 'bind',
      source: '/state/empty',
      options: ['rbind', 'ro', 'nosuid', 'noexec', 'nodev'],
    },
  )
})

test('criuExternalMounts: every bind under its destination, and /dev/null for the masked paths', () => {
  const spec = buildOciSpec(input)
  assert.deepEqual(criuExternalMounts(spec), [
    { key: '/sys/firmware', source: '/state/empty' },
    { key: '/sys/fs/cgroup', source: '/state/cgroupfs' },
    { key: '/sys/fs/cgroup/memory', source: '/sys/fs/cgroup/memory/initless/abc' },
    { key: '/dev/null', source: '/dev/null' },
  ])
  const unmasked = { ...spec, linux: { ...(spec.linux as object), maskedPaths: [] } }
  assert.ok(!criuExternalMounts(unmasked).some((m) => m.key === '/dev/null'))
})

describe('buildOciSpec: seccomp', () => {
  test('the profile given goes to linux.seccomp as it is; none without one', () => {
    const profile = {
      defaultAction: 'SCMP_ACT_ERRNO' as const,
      syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW' as const }],
    }
    const linux = (spec: Record<string, unknown>) => spec.linux as { seccomp?: unknown }
    assert.deepEqual(linux(buildOciSpec({ ...input, seccomp: profile })).seccomp, profile)
    assert.equal(linux(buildOciSpec(input)).seccomp, undefined)
  })
})
