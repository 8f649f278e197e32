import assert from 'node:assert/strict'
import { test } from 'node:test'
import { cpuMeter, hasLocalAddress, listensOn, parseProcStat, processTreeCpuSeconds } from './cpu.ts'

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
