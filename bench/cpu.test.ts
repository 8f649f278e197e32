import assert from 'node:assert/strict'
import { test } from 'node:test'
import {
  cpuMeter,
  hasLocalAddress,
  listensOn,
  machineCpuMeter,
  parseMachineCpu,
  parseProcStat,
  processTreeCpuSeconds,
} from './cpu.ts'

test('parseProcStat reads the parent pid and user + system ticks after a comm with spaces and parentheses', () => {
  const stat =
    '4242 (node (x) y) S 4000 4242 4242 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 11 0 1000 1000000 5000 18446744073709551615'
  assert.deepEqual(parseProcStat(stat), { ppid: 4000, cpuSeconds: 3.8 })
})

test('listensOn finds a LISTEN socket on the port at any local address; hasLocalAddress reads fib_trie', () => {
  const tcp = [
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    '   0: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1',
    '   1: 0800D50A:1F90 0100D50A:C350 01 00000000:00000000 00:00000000 00000000     0        0 2',
  ].join('\n')
  assert.equal(listensOn(tcp, 8080), false)
  assert.equal(listensOn(tcp, 8081), true)
  assert.equal(
    listensOn(
      `${tcp}\n   2: 0800D50A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3`,
      8080,
    ),
    true,
  )
  const fib = [
    'Main:',
    '  +-- 0.0.0.0/0 3 0 5',
    '     |-- 10.213.0.0',
    '        /16 link UNICAST',
    '     |-- 10.213.0.8',
    '        /32 host LOCAL',
    'Local:',
    '     |-- 10.213.0.1',
    '        /32 link UNICAST',
  ].join('\n')
  assert.equal(hasLocalAddress(fib, '10.213.0.8'), true)
  assert.equal(hasLocalAddress(fib, '10.213.0.1'), false)
  assert.equal(hasLocalAddress(fib, '10.213.0.0'), false)
})

test('processTreeCpuSeconds counts a process and its children; cpuMeter measures this process as the load generator', async () => {
  const { spawn } = await import('node:child_process')
  // A shell whose child burns CPU: the tree's time grows, the shell's own hardly.
  const shell = spawn('sh', ['-c', 'node -e "const t = Date.now(); while (Date.now() - t < 400);"'], {
    stdio: 'ignore',
  })
  const stop = cpuMeter(shell.pid, undefined)
  let seen = 0
  while (shell.exitCode === null) {
    seen = Math.max(seen, processTreeCpuSeconds(shell.pid!))
    await new Promise((r) => setTimeout(r, 50))
  }
  assert.ok(seen >= 0.1, `tree CPU ${seen} s`)
  const run = stop()
  assert.ok(run.seconds > 0.3)
  assert.ok(run.loadGeneratorS >= 0)
  assert.equal(run.instanceS, undefined)
  assert.equal(processTreeCpuSeconds(2 ** 22 + 1), 0)
})

test('parseMachineCpu: busy is everything but idle, iowait and steal; guest time is not counted twice', () => {
  const stat = 'cpu  100 20 30 500 50 5 5 10 40 0\ncpu0 50 10 15 250 25 2 3 5 20 0\nintr 1 2\n'
  // busy: user 100 + nice 20 + system 30 + irq 5 + softirq 5 (not idle 500, iowait 50, steal 10)
  assert.deepEqual(parseMachineCpu(stat), { busyS: 1.6, totalS: 7.2, cpus: 1 })
  assert.throws(() => parseMachineCpu('intr 1 2\n'), /no aggregate cpu line/)
})

test('machineCpuMeter sees this process busy and the machine at least as busy', () => {
  const stop = machineCpuMeter(undefined)
  // Until this process has used 150 ms of CPU (on a loaded machine that takes longer than 150 ms).
  const from = process.cpuUsage()
  const deadline = performance.now() + 10_000
  while (performance.now() < deadline) {
    const used = process.cpuUsage(from)
    if (used.user + used.system >= 150_000) break
    for (let i = 0; i < 1e5; i++) Math.sqrt(i)
  }
  const c = stop()
  assert.ok(c.wallS > 0 && c.cpus >= 1, JSON.stringify(c))
  assert.ok(c.loadGeneratorS >= 0.15, JSON.stringify(c))
  // /proc/stat counts in ticks of 10 ms: allow one per CPU of rounding.
  assert.ok(c.busyS + 0.01 * c.cpus >= c.loadGeneratorS, JSON.stringify(c))
  assert.equal(c.gatewayS, 0)
})
