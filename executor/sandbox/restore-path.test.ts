import assert from 'node:assert/strict'
import { test } from 'node:test'
import { InitlessError } from '../../shared/errors.ts'
import { ALLOWED_DEVICES, type CgroupLayout } from '../adapters/cgroups.ts'
import {
  formatRestorePath,
  lazyRestoreHazard,
  parseThpMode,
  probeRestorePath,
  type RestorePath,
} from './restore-path.ts'
import type { HelperRequest } from '../adapters/sandbox-helper.ts'
import { fakeSandboxHelper } from '../adapters/sandbox-helper-fake.ts'

const V1: CgroupLayout = { v2: false, root: '/sys/fs/cgroup', hierarchies: ['memory', 'devices', 'pids'] }
const V2: CgroupLayout = { v2: true, root: '/sys/fs/cgroup', hierarchies: [] }
const DIRECT_V1: RestorePath = { direct: true, reason: 'cgroup v1', settled: true }
const UNAVAILABLE = { direct: false, reason: 'cgroup v2, eBPF device filter unavailable' } as const

test('probeRestorePath: direct on v1, and on v2 when the kernel takes the device filter; else runc', async () => {
  const cases: {
    name: string
    layout: CgroupLayout
    /** undefined: no helper; else the fake helper's answer to the check. */
    helper?: (req: HelperRequest) => Error | number | undefined
    path: RestorePath
    text: string
    /** The helper is asked to load the filter. */
    asked: boolean
  }[] = [
    {
      name: 'v1, with a helper',
      layout: V1,
      helper: () => undefined,
      path: DIRECT_V1,
      text: 'direct (cgroup v1)',
      asked: false,
    },
    { name: 'v1, helper off', layout: V1, path: DIRECT_V1, text: 'direct (cgroup v1)', asked: false },
    {
      name: 'v2, helper off',
      layout: V2,
      path: { direct: false, reason: 'cgroup v2, sandbox helper off', settled: true },
      text: 'runc restore (cgroup v2, sandbox helper off)',
      asked: false,
    },
    {
      name: 'v2, the kernel loads the filter',
      layout: V2,
      helper: () => undefined,
      path: { direct: true, reason: 'cgroup v2, eBPF device filter', settled: true },
      text: 'direct (cgroup v2, eBPF device filter)',
      asked: true,
    },
    {
      name: 'v2, the kernel refuses it (EPERM): settled',
      layout: V2,
      helper: () => 1,
      path: { ...UNAVAILABLE, filterError: 'sandbox helper device-filter-check: errno 1', settled: true },
      text: 'runc restore (cgroup v2, eBPF device filter unavailable)',
      asked: true,
    },
    {
      name: 'v2, the helper died: asked again next time',
      layout: V2,
      helper: () =>
        new InitlessError('ERR_COMMAND_FAILED', 'sandbox helper device-filter-check: helper exited'),
      path: {
        ...UNAVAILABLE,
        filterError: 'sandbox helper device-filter-check: helper exited',
        settled: false,
      },
      text: 'runc restore (cgroup v2, eBPF device filter unavailable)',
      asked: true,
    },
  ]
  for (const c of cases) {
    const fake = c.helper ? fakeSandboxHelper(c.helper) : undefined
    const path = await probeRestorePath({
      layout: c.layout,
      helper: fake?.helper,
      withoutHelper: 'sandbox helper off',
    })
    assert.deepEqual(path, c.path, c.name)
    assert.equal(formatRestorePath(path), c.text, c.name)
    // The check loads the very rules v1 writes to devices.allow: one list for both.
    assert.deepEqual(
      fake?.requests ?? [],
      c.asked ? [{ op: 'device-filter-check', args: [...ALLOWED_DEVICES] }] : [],
      c.name,
    )
  }
})

test('parseThpMode: the bracketed mode of the kernel setting', () => {
  assert.equal(parseThpMode('[always] madvise never\n'), 'always')
  assert.equal(parseThpMode('always [madvise] never\n'), 'madvise')
  assert.equal(parseThpMode('always madvise [never]\n'), 'never')
  assert.equal(parseThpMode(''), undefined)
})

test('lazyRestoreHazard: only THP always with CRIU not spawned by the sandbox helper', () => {
  const runc = { direct: false }
  const direct = { direct: true }
  for (const mode of ['madvise', 'never', undefined]) {
    assert.equal(lazyRestoreHazard(runc, false, mode), undefined, String(mode))
    assert.equal(lazyRestoreHazard(direct, false, mode), undefined, String(mode))
  }
  assert.equal(lazyRestoreHazard(direct, true, 'always'), undefined)
  assert.match(
    lazyRestoreHazard(runc, true, 'always') ?? '',
    /'always' and runc restore: lazy restores .* crash/,
  )
  assert.match(lazyRestoreHazard(runc, false, 'always') ?? '', /runc restore/)
  assert.match(
    lazyRestoreHazard(direct, false, 'always') ?? '',
    /criu restore is started without the sandbox helper/,
  )
})
