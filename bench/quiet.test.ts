import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import {
  ancestry,
  awaitQuietMachine,
  BusyMachineError,
  busyProcesses,
  classifyProcess,
  loadAverage1m,
} from './quiet.ts'
import { quietLine } from './report.ts'

const proc = (comm: string, cmdline: string, cgroup = '0::/user.slice\n') => ({
  pid: 1,
  comm,
  cmdline,
  cgroup,
})

test('classifyProcess names what a benchmark must not share the machine with, and nothing else', () => {
  const cases: [ReturnType<typeof proc>, string | undefined][] = [
    [proc('criu', '/usr/local/sbin/criu restore -D /x'), 'criu'],
    [proc('runc', 'runc --root /run/initless/runc run x'), 'runc'],
    [proc('qemu-system-x86', 'qemu-system-x86_64 -m 8G'), 'virtual machine'],
    [proc('node', 'node dist/executor/main.js'), 'executor'],
    [proc('node', 'node --import tsx /work/main/executor/main.ts'), 'executor'],
    [proc('node', '/usr/bin/node /opt/initless/dist/gateway/main.js'), 'gateway'],
    [proc('node', 'node --import tsx bench/restore.ts --n 5'), 'benchmark'],
    [proc('node', 'node /work/main/bin/initless.mjs up'), 'initless up'],
    [
      proc('node', 'node server.js', '4:memory:/initless/hello-node-0123456789ab\n1:name=systemd:/\n'),
      'function instance',
    ],
    [
      proc('java', 'java -jar app.jar', '0::/system.slice/initless-executor.service/initless/spring-1\n'),
      'function instance',
    ],
    // Look-alikes that are not initless's.
    [proc('node', 'node /srv/app/gateway/server.js'), undefined],
    [proc('node', 'node --import tsx bench/report.test.ts'), undefined],
    [proc('bash', 'bash', '0::/system.slice/initless-executor.service\n'), undefined],
    [proc('criu-ns', 'python3 criu-ns'), undefined],
    [proc('sshd', '/usr/sbin/sshd -D'), undefined],
  ]
  for (const [p, want] of cases) assert.equal(classifyProcess(p), want, `${p.comm}: ${p.cmdline}`)
})

test('busyProcesses reads /proc, skips kernel threads, excluded pids and processes that vanish', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'quiet-'))
  try {
    const fake = async (pid: number, comm: string, cmdline: string, cgroup = '0::/\n') => {
      await mkdir(join(dir, String(pid)))
      await writeFile(join(dir, String(pid), 'comm'), `${comm}\n`)
      await writeFile(join(dir, String(pid), 'cmdline'), cmdline.split(' ').join('\0') + '\0')
      await writeFile(join(dir, String(pid), 'cgroup'), cgroup)
    }
    await fake(10, 'criu', 'criu restore')
    await fake(11, 'kworker/0:1', '')
    await fake(12, 'node', 'node dist/gateway/main.js')
    await fake(13, 'node', 'node dist/executor/main.js')
    await mkdir(join(dir, '14')) // exited between readdir and read
    await writeFile(join(dir, '13', 'stat'), '13 (node (x)) S 12 13 13 0')
    await writeFile(join(dir, '12', 'stat'), '12 (node) S 1 12 12 0')
    assert.deepEqual([...(await ancestry(13, dir))], [13, 12])
    assert.deepEqual([...(await ancestry(14, dir))], [14], 'stops where /proc has no stat')
    await writeFile(join(dir, 'loadavg'), '0.42 0.30 0.20 1/200 999\n')
    assert.deepEqual((await busyProcesses(new Set([13]), dir)).sort(), ['criu (pid 10)', 'gateway (pid 12)'])
    assert.equal(await loadAverage1m(join(dir, 'loadavg')), 0.42)
    await writeFile(join(dir, 'loadavg'), 'garbage\n')
    await assert.rejects(loadAverage1m(join(dir, 'loadavg')), /cannot read the load average/)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('awaitQuietMachine waits for the load to fall and the machine to empty, then passes', async () => {
  const samples = [
    { load1m: 1.4, busy: ['criu (pid 7)'] },
    { load1m: 0.7, busy: [] },
    { load1m: 0.4, busy: [] },
  ]
  const lines: string[] = []
  const v = await awaitQuietMachine({
    maxLoad: 0.5,
    waitMs: 60_000,
    allowBusy: false,
    pollMs: 1,
    progress: (l) => lines.push(l),
    sample: async () => samples.shift()!,
  })
  assert.equal(v.comparable, true)
  assert.equal(v.load1m, 0.4)
  assert.equal(samples.length, 0)
  assert.equal(lines.length, 1, 'announces the wait once')
  assert.match(lines[0]!, /load 1.4 \(limit 0.5\); running: criu \(pid 7\)/)
  assert.match(quietLine(v), /^Quiet machine: load 0.4 <= 0.5/)
})

test('awaitQuietMachine refuses a busy machine after its wait, or marks the result not comparable', async () => {
  const busy = async () => ({ load1m: 0.2, busy: ['gateway (pid 9)'] })
  const base = { maxLoad: 0.5, waitMs: 0, pollMs: 1, progress: () => {}, sample: busy }
  await assert.rejects(awaitQuietMachine({ ...base, allowBusy: false }), (err: unknown) => {
    assert.ok(err instanceof BusyMachineError)
    assert.match(err.message, /not a quiet machine.*running: gateway \(pid 9\).*--allow-busy/)
    return true
  })
  const v = await awaitQuietMachine({ ...base, allowBusy: true })
  assert.equal(v.comparable, false)
  assert.match(quietLine(v), /NOT COMPARABLE.*load 0.2 \(limit 0.5\); running: gateway \(pid 9\)/)
})
