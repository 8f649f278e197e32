import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { isInitlessError } from '../../shared/errors.ts'
import {
  createCriu,
  criuDumpConfigText,
  criuRestoreArgs,
  criuRestoreConfigText,
  DESCRIPTORS_FILE,
  killLazyPages,
  type CriuRestoreRequest,
} from './criu.ts'
import type { CommandRunner } from './exec.ts'
import { isProcessAlive } from './process.ts'
import type { ProcessExit, SandboxHelper, SpawnRequest, SpawnStatus } from './sandbox-helper.ts'

const req: CriuRestoreRequest = {
  imagesDir: '/state/snapshots/fn/k/images',
  workDir: '/state/instances/i1/criu',
  root: '/state/instances/i1/bundle/rootfs',
  pidFile: '/state/instances/i1/pid',
  netnsPath: '/var/run/netns/initless-i1',
  cgroupRoot: '/initless/i1',
  externalMounts: [
    { key: '/sys/firmware', source: '/state/empty' },
    { key: '/dev/null', source: '/dev/null' },
  ],
  lazy: true,
  outputPath: '/sb/output.log',
}

/** The value following `flag` (each occurrence). */
function values(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1] ?? ''] : []))
}

test('criuRestoreArgs: what runc sends CRIU for `runc restore -d`, as options', () => {
  const args = criuRestoreArgs(req, ['/dev/null', 'pipe:[77]', 'pipe:[77]'])
  assert.equal(args[0], 'restore')
  assert.deepEqual(values(args, '--images-dir'), [req.imagesDir])
  assert.deepEqual(values(args, '--work-dir'), [req.workDir])
  assert.deepEqual(values(args, '--root'), [req.root])
  assert.deepEqual(values(args, '--pidfile'), [req.pidFile])
  assert.deepEqual(values(args, '--cgroup-root'), ['/initless/i1'])
  assert.deepEqual(values(args, '--network-lock'), ['skip'])
  // The namespace arrives as fd 3 under runc's key; the stdio pipes as the fds they were.
  assert.deepEqual(values(args, '--inherit-fd'), ['fd[3]:extRootNetNS', 'fd[1]:pipe:[77]', 'fd[2]:pipe:[77]'])
  assert.deepEqual(values(args, '--ext-mount-map'), ['/sys/firmware:/state/empty', '/dev/null:/dev/null'])
  for (const flag of [
    '--restore-detached',
    '--evasive-devices',
    '--mntns-compat-mode',
    '--manage-cgroups=soft',
    '--lazy-pages',
  ])
    assert.ok(args.includes(flag), flag)
  assert.ok(args.includes('-v2'))
})

test('criuRestoreArgs: an eager restore has no --lazy-pages; the log level can be raised', () => {
  const args = criuRestoreArgs({ ...req, lazy: false, logLevel: 4 }, ['/dev/null', '/dev/null', '/dev/null'])
  assert.ok(!args.includes('--lazy-pages'))
  assert.ok(args.includes('-v4') && !args.includes('-v2'))
  assert.deepEqual(values(args, '--inherit-fd'), ['fd[3]:extRootNetNS'])
})

/** The options of a CRIU config file, one `option [value]` per line. */
function configLines(text: string): string[] {
  assert.ok(text.endsWith('\n'))
  return text.trimEnd().split('\n')
}

test('killLazyPages: a daemon reaped between the check and the kill is gone, not an error', (t) => {
  // This process is alive, so the kill is attempted; the mocked kill answers as for a pid just reaped.
  const daemon = { pid: process.pid, exited: new Promise<number | null>(() => undefined) }
  const kill = t.mock.method(process, 'kill', () => {
    throw Object.assign(new Error('kill ESRCH'), { code: 'ESRCH' })
  })
  assert.doesNotThrow(() => killLazyPages(daemon))
  assert.deepEqual(kill.mock.calls[0]?.arguments, [process.pid, 'SIGKILL'])
  // Any other failure is still one.
  kill.mock.mockImplementation(() => {
    throw Object.assign(new Error('kill EPERM'), { code: 'EPERM' })
  })
  assert.throws(() => killLazyPages(daemon), /EPERM/)
  kill.mock.restore()
  // No daemon, or one whose pid is no process: nothing is signalled.
  const spy = t.mock.method(process, 'kill')
  killLazyPages(undefined)
  killLazyPages({ pid: 2 ** 22 + 1, exited: Promise.resolve(0) })
  assert.equal(spy.mock.callCount(), 0)
})

test('criuDumpConfigText: no network lock, and nothing only restores may have', () => {
  assert.deepEqual(configLines(criuDumpConfigText()), ['network-lock skip'])
})

test("criuRestoreConfigText: runc restores get the old mount engine and the sandbox's cgroup", () => {
  assert.deepEqual(configLines(criuRestoreConfigText({ lazy: false, cgroupRoot: '/initless/i1' })), [
    'network-lock skip',
    'mntns-compat-mode',
    'cgroup-root /initless/i1',
  ])
  assert.deepEqual(configLines(criuRestoreConfigText({ lazy: true, cgroupRoot: '/initless/i2' })), [
    'network-lock skip',
    'mntns-compat-mode',
    'cgroup-root /initless/i2',
    'lazy-pages',
  ])
})

test("writeRestoreConfig: replaces a checkpoint's config with the restore's, readable by root only", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'criu-conf-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const criu = createCriu({ run: () => Promise.reject(new Error('no command expected')) })
  const fresh = join(dir, 'fresh.conf')
  await criu.writeRestoreConfig(fresh, { lazy: false, cgroupRoot: '/initless/i1' })
  assert.equal(
    await readFile(fresh, 'utf8'),
    criuRestoreConfigText({ lazy: false, cgroupRoot: '/initless/i1' }),
  )
  assert.equal((await stat(fresh)).mode & 0o777, 0o600)
  // The sandbox's file holds the checkpoint's config until a restore rewrites it.
  const file = join(dir, 'criu.conf')
  await writeFile(file, criuDumpConfigText(), { mode: 0o600 })
  await criu.writeRestoreConfig(file, { lazy: true, cgroupRoot: '/initless/i2' })
  assert.equal(
    await readFile(file, 'utf8'),
    criuRestoreConfigText({ lazy: true, cgroupRoot: '/initless/i2' }),
  )
})

describe('restore through the sandbox helper', () => {
  /** A helper whose spawned `criu` "exits" with `exit`, recording what it was asked to start. */
  function fakeHelper(exit: ProcessExit) {
    const spawned: SpawnRequest[] = []
    const helper: SandboxHelper = {
      request: () => Promise.reject(new Error('not used')),
      spawn: async (r) => {
        spawned.push(r)
        return { pid: 2 ** 22 + 1, exited: Promise.resolve(exit) }
      },
      processId: () => undefined,
      close: () => {},
    }
    return { helper, spawned }
  }
  const noRun: CommandRunner = () => Promise.reject(new Error('no command may run'))

  async function snapshotDir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'initless-criu-'))
    await writeFile(join(dir, DESCRIPTORS_FILE), JSON.stringify(['/dev/null', 'pipe:[9]', 'pipe:[9]']))
    return dir
  }

  test('starts criu in its own session (and process group) with the output log and the namespace as fd 3', async () => {
    const dir = await snapshotDir()
    const { helper, spawned } = fakeHelper({ code: 0, signal: null })
    const ms = await createCriu({ run: noRun, bin: '/x/criu', helper }).restore({
      ...req,
      imagesDir: dir,
      workDir: dir,
    })
    assert.ok(ms >= 0)
    assert.equal(spawned.length, 1)
    const s = spawned[0]!
    assert.deepEqual(s.argv, [
      '/x/criu',
      ...criuRestoreArgs({ ...req, imagesDir: dir, workDir: dir }, ['/dev/null', 'pipe:[9]', 'pipe:[9]']),
    ])
    assert.equal(s.output, req.outputPath)
    assert.equal(s.fd3, req.netnsPath)
    assert.equal(s.mode, 'session')
    assert.equal(s.keepAlive, true)
    await rm(dir, { recursive: true })
  })

  test('a failed criu is ERR_COMMAND_FAILED with the tail of restore.log', async () => {
    const dir = await snapshotDir()
    await writeFile(join(dir, 'restore.log'), '(00.001) Error (criu/mount.c:1): mnt: no such mount\n')
    for (const [exit, says] of [
      [{ code: 1, signal: null }, /restore: exit 1/],
      [{ code: null, signal: 9 }, /restore: exit on signal 9/],
      [{ code: null, signal: null }, /sandbox helper died/],
    ] as const) {
      const { helper } = fakeHelper(exit)
      await assert.rejects(
        createCriu({ run: noRun, helper }).restore({ ...req, imagesDir: dir, workDir: dir }),
        (err: unknown) =>
          isInitlessError(err) &&
          err.code === 'ERR_COMMAND_FAILED' &&
          says.test(err.message) &&
          err.message.includes('mnt: no such mount'),
      )
    }
    await rm(dir, { recursive: true })
  })
})

describe('starting a lazy-pages daemon', () => {
  const noRun: CommandRunner = () => Promise.reject(new Error('no command may run'))

  /** A stand-in for `criu` (run without the helper): a shell script, given the daemon's args. */
  async function fakeCriu(dir: string, script: string): Promise<string> {
    const bin = join(dir, 'criu')
    await writeFile(bin, `#!/bin/sh\n${script}\n`, { mode: 0o755 })
    return bin
  }

  test('without the helper: it is asked for --status-fd 3 and listens once it writes there', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'initless-lazy-'))
    try {
      // Records its arguments, reports on fd 3, then runs on as a daemon does.
      const bin = await fakeCriu(dir, `echo "$@" > ${dir}/args; printf x >&3; exec 3>&-; sleep 30`)
      const daemon = await createCriu({ run: noRun, bin }).startLazyPages('/images', dir)
      assert.equal(
        (await readFile(join(dir, 'args'), 'utf8')).trim(),
        `lazy-pages --images-dir /images --work-dir ${dir} -o lazy-pages.log -v2 --status-fd 3`,
      )
      assert.ok(isProcessAlive(daemon.pid))
      killLazyPages(daemon)
      // Not `await daemon.exited`: the daemon's handle does not hold the event loop (it outlives
      // the executor), and nothing else here does.
      await waitFor(() => !isProcessAlive(daemon.pid))
    } finally {
      await rm(dir, { recursive: true })
    }
  })

  test('without the helper: one that exits or stays silent is an error, and a silent one is killed', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'initless-lazy-'))
    try {
      const exits = await fakeCriu(dir, 'exit 1')
      await assert.rejects(
        createCriu({ run: noRun, bin: exits }).startLazyPages('/images', dir),
        (err: unknown) =>
          isInitlessError(err) &&
          err.code === 'ERR_RESTORE_FAILED' &&
          err.message === `criu lazy-pages exited before listening (see ${dir}/lazy-pages.log)`,
      )
      const silent = await fakeCriu(dir, `echo $$ > ${dir}/pid; exec sleep 30`)
      await assert.rejects(
        createCriu({ run: noRun, bin: silent }).startLazyPages('/images', dir, { timeoutMs: 300 }),
        /criu lazy-pages did not listen within 300 ms/,
      )
      const pid = Number(await readFile(join(dir, 'pid'), 'utf8'))
      await waitFor(() => !isProcessAlive(pid))
    } finally {
      await rm(dir, { recursive: true })
    }
  })

  test('through the helper: its status report decides; only a lost report asks the socket', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'initless-lazy-'))
    const spawned: SpawnRequest[] = []
    const helperReporting = (status: SpawnStatus): SandboxHelper => ({
      request: () => Promise.reject(new Error('not used')),
      spawn: async (r) => {
        spawned.push(r)
        // A pid no process has (above pid_max): killing it is a no-op.
        return {
          pid: 2 ** 22 + 1,
          exited: new Promise<ProcessExit>(() => {}),
          status: Promise.resolve(status),
        }
      },
      processId: () => undefined,
      close: () => {},
    })
    try {
      const criu = (status: SpawnStatus) =>
        createCriu({ run: noRun, bin: '/x/criu', helper: helperReporting(status) })
      const daemon = await criu('ready').startLazyPages('/images', dir)
      assert.equal(daemon.pid, 2 ** 22 + 1)
      assert.equal(spawned[0]!.status, true)
      assert.equal(spawned[0]!.fd3, undefined)
      assert.deepEqual(spawned[0]!.argv.slice(-2), ['--status-fd', '3'])
      await assert.rejects(criu('unready').startLazyPages('/images', dir), /exited before listening/)
      // The report was lost and nothing listens on the socket: the deadline decides.
      await assert.rejects(
        criu('unknown').startLazyPages('/images', dir, { timeoutMs: 50 }),
        /did not listen within 50 ms/,
      )
    } finally {
      await rm(dir, { recursive: true })
    }
  })
})

async function waitFor(check: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 10))
  }
}
