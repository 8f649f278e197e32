/**
 * The cgroup v2 device filter (executor/native/sandbox-helper.c `device-filter`) against the real
 * kernel. Attached by the real helper to a cgroup of this host's cgroup2 mount (on a hybrid host
 * such as this one the empty hierarchy at /sys/fs/cgroup/unified: BPF device programs attach to any
 * cgroup2 cgroup, and the kernel runs them on every open and mknod of a device node by a process in
 * it), it lets a process there do what runc's default rules let a container do, and no more. The
 * same requests from a process outside the cgroup show that each refusal is the filter's.
 */
import assert from 'node:assert/strict'
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { mkdir, mkdtemp, rm, rmdir, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { after, before, describe, test } from 'node:test'
import { randomUUID } from 'node:crypto'
import { ALLOWED_DEVICES, deviceFilterRequest, type CgroupLayout } from '../executor/adapters/cgroups.ts'
import { sandboxHelperPath } from '../executor/wiring.ts'
import { createSandboxHelper, type SandboxHelper } from '../executor/adapters/sandbox-helper.ts'
import { isInitlessError } from '../shared/errors.ts'
import { requireServices } from './support/integration.ts'

/** Where cgroup2 is mounted here: /sys/fs/cgroup/unified (hybrid) or /sys/fs/cgroup (v2). */
function cgroup2Mount(): string | undefined {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ')
    if (post?.split(' ')[0] === 'cgroup2') return pre?.split(' ')[4]
  }
  return undefined
}

/**
 * A node process that performs device requests read from stdin (one JSON line each) and answers
 * `ok` or the error code: opens with open(2), mknod with mknod(1) (a child, so in the same cgroup;
 * its stdio are pipes, as a filter under test may refuse /dev/null).
 */
const WORKER = `
const fs = require('node:fs')
const { execFileSync } = require('node:child_process')
require('node:readline').createInterface({ input: process.stdin }).on('line', (line) => {
  const r = JSON.parse(line)
  let out = 'ok'
  try {
    if (r.op === 'open') fs.closeSync(fs.openSync(r.path, r.flags))
    else execFileSync('mknod', [r.path, r.type, String(r.major), String(r.minor)], { stdio: 'pipe' })
  } catch (e) {
    if (r.op === 'open' || e.code) out = String(e.code)
    else out = /Operation not permitted/.test(String(e.stderr)) ? 'EPERM' : 'failed: ' + String(e.stderr).trim()
  }
  process.stdout.write(out + '\\n')
})
`

type DeviceRequest =
  | { op: 'open'; path: string; flags: 'r' | 'w' | 'r+' }
  | { op: 'mknod'; path: string; type: 'c' | 'b'; major: number; minor: number }

interface Worker {
  readonly pid: number
  ask(req: DeviceRequest): Promise<string>
  stop(): Promise<void>
}

function startWorker(): Worker {
  const child: ChildProcessWithoutNullStreams = spawn(process.execPath, ['-e', WORKER], { stdio: 'pipe' })
  const lines = createInterface({ input: child.stdout })
  const waiting: ((line: string) => void)[] = []
  lines.on('line', (line) => waiting.shift()?.(line))
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  const exited = once(child, 'exit')
  return {
    pid: child.pid!,
    ask(req) {
      return new Promise<string>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`worker did not answer ${JSON.stringify(req)}: ${stderr}`)),
          10_000,
        )
        waiting.push((line) => {
          clearTimeout(timer)
          resolve(line)
        })
        child.stdin.write(`${JSON.stringify(req)}\n`)
      })
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      await exited
    },
  }
}

/** The program's symbol while the kernel holds it (JIT-compiled programs are listed by name). */
const kallsymsCount = () => readFileSync('/proc/kallsyms', 'utf8').split('_initless_dev').length - 1
const sysctl = (name: string) => {
  // The bpf_jit_* files exist in the initial network namespace only (not in a container's).
  const path = `/proc/sys/net/core/${name}`
  return existsSync(path) ? readFileSync(path, 'utf8').trim() : undefined
}
const kallsymsShowPrograms = () =>
  (sysctl('bpf_jit_enable') ?? '0') !== '0' && sysctl('bpf_jit_kallsyms') === '1'

/** The helper's open files, as /proc shows them (a leaked program or cgroup fd would be one). */
const openFiles = (pid: number) =>
  readdirSync(`/proc/${pid}/fd`)
    .map((fd) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`)
      } catch {
        return '' // the directory listing's own fd, gone meanwhile
      }
    })
    .filter(Boolean)
    .sort()

async function waitFor(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

describe('cgroup v2 device filter', () => {
  let helper: SandboxHelper | undefined
  let dir = ''
  const cgroups: string[] = []
  const workers: Worker[] = []
  let layout: CgroupLayout | undefined

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'initless-devfilter-'))
  })
  after(async () => {
    for (const w of workers) await w.stop()
    for (const cg of cgroups) await rmdir(cg).catch(() => undefined)
    helper?.close()
    await rm(dir, { recursive: true, force: true })
  })

  /** The real helper and a fresh cgroup of this host's cgroup2 mount. */
  const setup = async () => {
    const path = sandboxHelperPath({ INITLESS_SANDBOX_HELPER: 'auto' })
    assert.ok(path, 'no sandbox helper built from this source: run scripts/provision.sh')
    helper ??= createSandboxHelper({ path })
    const mount = cgroup2Mount()
    assert.ok(mount, 'no cgroup2 file system mounted on this host')
    layout = { v2: true, root: mount, hierarchies: [] }
    const rel = `/initless-test-${randomUUID().slice(0, 8)}`
    await mkdir(join(mount, rel))
    cgroups.push(join(mount, rel))
    return { h: helper, layout, rel, cgroupDir: join(mount, rel) }
  }

  /** A worker moved into `cgroupDir`, and one left where the test runs. */
  const workersFor = async (cgroupDir: string) => {
    const inside = startWorker()
    const outside = startWorker()
    workers.push(inside, outside)
    await writeFile(join(cgroupDir, 'cgroup.procs'), String(inside.pid))
    const mount = layout!.root
    assert.match(
      readFileSync(`/proc/${inside.pid}/cgroup`, 'utf8'),
      new RegExp(`^0::${cgroupDir.slice(mount.length)}$`, 'm'),
    )
    return { inside, outside }
  }

  /** A device node made by the test itself (outside any filter), so no host /dev is assumed. */
  const node = (name: string, type: 'c' | 'b', major: number, minor: number) => {
    const path = join(dir, name)
    if (!existsSync(path)) execFileSync('mknod', [path, type, String(major), String(minor)])
    return path
  }

  test("runc's default rules: null, zero, urandom, ptys, tun open; other devices do not; any node may be created", async (t) => {
    if (!requireServices(t)) return
    const { h, layout, rel, cgroupDir } = await setup()
    const before = kallsymsCount()
    await h.request({ op: 'ping', args: [] }) // the helper runs, its own files open
    const fdsBefore = openFiles(h.processId()!)
    await h.request(deviceFilterRequest(layout, rel))
    if (kallsymsShowPrograms()) assert.equal(kallsymsCount(), before + 1, 'the kernel holds one program')
    // The helper keeps nothing open: the cgroup alone holds the program.
    assert.deepEqual(openFiles(h.processId()!), fdsBefore)

    const { inside, outside } = await workersFor(cgroupDir)
    // Opens: `allowed` means the filter lets it through (the driver may still refuse: a pty that
    // does not exist answers ENXIO/EIO, never EPERM).
    const cases: { name: string; path: string; flags: 'r' | 'w' | 'r+'; allowed: boolean }[] = [
      { name: 'the host /dev/null', path: '/dev/null', flags: 'r+', allowed: true },
      { name: 'c 1:3 null', path: node('null', 'c', 1, 3), flags: 'r+', allowed: true },
      { name: 'c 1:5 zero', path: node('zero', 'c', 1, 5), flags: 'r', allowed: true },
      { name: 'c 1:7 full', path: node('full', 'c', 1, 7), flags: 'w', allowed: true },
      { name: 'c 1:9 urandom', path: node('urandom', 'c', 1, 9), flags: 'r', allowed: true },
      { name: 'c 5:2 ptmx', path: node('ptmx', 'c', 5, 2), flags: 'r+', allowed: true },
      { name: 'c 136:7 a pty (any minor)', path: node('pts7', 'c', 136, 7), flags: 'r+', allowed: true },
      { name: 'c 10:200 tun', path: node('tun', 'c', 10, 200), flags: 'r+', allowed: true },
      { name: 'c 1:1 mem', path: node('mem', 'c', 1, 1), flags: 'r', allowed: false },
      { name: 'c 1:11 kmsg', path: node('kmsg', 'c', 1, 11), flags: 'r', allowed: false },
      { name: 'the host /dev/kmsg', path: '/dev/kmsg', flags: 'r', allowed: false },
      {
        name: 'c 10:201 (tun is 10:200 only)',
        path: node('misc201', 'c', 10, 201),
        flags: 'r',
        allowed: false,
      },
      { name: 'c 137:0 (ptys are major 136)', path: node('pts137', 'c', 137, 0), flags: 'r', allowed: false },
      {
        name: 'b 7:0 a loop device (block: create only)',
        path: node('loop0', 'b', 7, 0),
        flags: 'r',
        allowed: false,
      },
    ]
    for (const c of cases) {
      const req = { op: 'open', path: c.path, flags: c.flags } as const
      const [got, control] = [await inside.ask(req), await outside.ask(req)]
      assert.notEqual(control, 'EPERM', `${c.name}: outside the cgroup nothing refuses it`)
      if (c.allowed) assert.notEqual(got, 'EPERM', `${c.name}: allowed in the cgroup (got ${got})`)
      else assert.equal(got, 'EPERM', `${c.name}: refused in the cgroup`)
    }
    // mknod of any char or block node is allowed (`c *:* m`, `b *:* m`), opening it is not.
    const made = join(dir, 'made-in-cgroup')
    assert.equal(await inside.ask({ op: 'mknod', path: made, type: 'c', major: 1, minor: 1 }), 'ok')
    assert.equal(await inside.ask({ op: 'mknod', path: `${made}-b`, type: 'b', major: 7, minor: 1 }), 'ok')
    assert.equal(await inside.ask({ op: 'open', path: made, flags: 'r' }), 'EPERM')

    // Removing the cgroup releases the program: nothing of it stays in the kernel.
    await inside.stop()
    await rmdir(cgroupDir)
    cgroups.splice(cgroups.indexOf(cgroupDir), 1)
    assert.equal(existsSync(cgroupDir), false)
    if (kallsymsShowPrograms()) await waitFor('the program to be freed', () => kallsymsCount() === before)
    else t.diagnostic('bpf_jit_kallsyms is off: the program release cannot be observed in /proc/kallsyms')
    assert.deepEqual(openFiles(h.processId()!), fdsBefore)
  })

  test('access bits: r allows reading only, rw both, no m no mknod; rules are taken in any order', async (t) => {
    if (!requireServices(t)) return
    const { h, layout, rel, cgroupDir } = await setup()
    await h.request(deviceFilterRequest(layout, rel, ['b *:* m', 'c 1:3 r', 'c 1:5 rw', 'c 1:7 wm']))
    const { inside, outside } = await workersFor(cgroupDir)
    const nul = node('null', 'c', 1, 3)
    const zero = node('zero', 'c', 1, 5)
    const full = node('full', 'c', 1, 7)
    const cases: { req: DeviceRequest; allowed: boolean }[] = [
      { req: { op: 'open', path: nul, flags: 'r' }, allowed: true },
      { req: { op: 'open', path: nul, flags: 'w' }, allowed: false },
      { req: { op: 'open', path: nul, flags: 'r+' }, allowed: false },
      { req: { op: 'open', path: zero, flags: 'r+' }, allowed: true },
      { req: { op: 'open', path: full, flags: 'w' }, allowed: true },
      { req: { op: 'open', path: full, flags: 'r' }, allowed: false },
      { req: { op: 'mknod', path: join(dir, 'n1'), type: 'c', major: 1, minor: 3 }, allowed: false },
      { req: { op: 'mknod', path: join(dir, 'n2'), type: 'c', major: 1, minor: 7 }, allowed: true },
      { req: { op: 'mknod', path: join(dir, 'n3'), type: 'b', major: 7, minor: 3 }, allowed: true },
    ]
    for (const c of cases) {
      const name = JSON.stringify(c.req)
      const got = await inside.ask(c.req)
      if (c.allowed) assert.equal(got, 'ok', name)
      else assert.equal(got, 'EPERM', name)
      // The control makes its own node: the refused one must not exist for it either.
      const control = c.req.op === 'mknod' ? { ...c.req, path: `${c.req.path}-outside` } : c.req
      assert.equal(await outside.ask(control), 'ok', `${name} outside the cgroup`)
    }
  })

  test('bad requests get a clear error and attach nothing', async (t) => {
    if (!requireServices(t)) return
    const { h, cgroupDir } = await setup()
    const before = kallsymsCount()
    const rejects = async (args: string[], errno: number, message: RegExp) =>
      assert.rejects(
        h.request({ op: 'device-filter', args: args as [string, ...string[]] }),
        (err: unknown) => isInitlessError(err) && err.details.errno === errno && message.test(err.message),
        args.join(' | '),
      )
    for (const rule of [
      'a *:* rwm',
      'c 1:3',
      'c 1:3 rwx',
      'c 1:3 rr',
      'c 1 3 r',
      'c 4096:0 r',
      'c 1:1048576 r',
      'c -1:3 r',
      'c 1:3 r ',
    ]) {
      await rejects(
        [cgroupDir, 'c 1:5 rwm', rule],
        22,
        new RegExp(`bad device rule '${rule.replace(/[*]/g, '\\*')}'`),
      )
    }
    await rejects(
      [cgroupDir, ...Array.from({ length: 65 }, () => 'c 1:3 r')],
      7,
      /65 device rules, at most 64/,
    )
    await rejects([join(cgroupDir, 'missing'), 'c 1:3 r'], 2, /open cgroup .*missing/)
    // A directory that is no cgroup2 cgroup (a v1 hierarchy here, or any plain directory).
    await rejects([dir, 'c 1:3 r'], 9, /not a cgroup v2 directory/)
    if (kallsymsShowPrograms()) assert.equal(kallsymsCount(), before, 'no program left loaded')
    // The check loads what the executor would attach: the kernel takes runc's list.
    await h.request({ op: 'device-filter-check', args: [...ALLOWED_DEVICES] })
    await assert.rejects(h.request({ op: 'device-filter-check', args: ['c *:* q'] }), /bad device rule/)
    // The helper still serves requests.
    await h.request({ op: 'ping', args: [] })
  })
})
