/**
 * The sandbox helper (executor/native/sandbox-helper.c) against the real kernel: namespaces with
 * their veth pair, address and route; overlay mounts; cgroup-style writes; processes it spawns;
 * bad requests; and what the executor sees when the helper dies.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createSocket } from 'node:dgram'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, statfs, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { loadExecutorConfig } from '../executor/config.ts'
import { sandboxHelperPath } from '../executor/wiring.ts'
import { macFor, NETNS_DIR } from '../executor/adapters/network.ts'
import { createSandboxHelper, type SandboxHelper } from '../executor/adapters/sandbox-helper.ts'
import { isInitlessError } from '../shared/errors.ts'
import { requireServices } from './support/integration.ts'

const config = loadExecutorConfig(process.env)
const ip = (...args: string[]) => execFileSync('ip', args, { encoding: 'utf8' })
const hasLink = (name: string) => ip('-o', 'link', 'show').includes(` ${name}@`)

/** How long a connection to `ip`:`port` takes to be refused (rejects on any other outcome). */
function refusedAfter(ip: string, port: number): Promise<number> {
  const started = performance.now()
  return new Promise((resolve, reject) => {
    const sock = connect(port, ip)
    const timer = setTimeout(() => {
      sock.destroy()
      reject(new Error(`${ip}:${port} did not answer within 5 s`))
    }, 5_000)
    sock.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      if (err.code === 'ECONNREFUSED') resolve(performance.now() - started)
      else reject(err)
    })
    sock.on('connect', () => {
      clearTimeout(timer)
      sock.destroy()
      reject(new Error(`${ip}:${port} accepted a connection`))
    })
  })
}

/** Send one UDP datagram to `ip`:`port` (nothing needs to receive it). */
async function sendDatagram(ip: string, port: number): Promise<void> {
  const sock = createSocket('udp4')
  try {
    await new Promise<void>((resolve, reject) =>
      sock.send(Buffer.from('x'), port, ip, (err) => (err ? reject(err) : resolve())),
    )
  } finally {
    sock.close()
  }
}

/** The mount options /proc/self/mountinfo lists for the mount point `target`. */
function mountOptions(target: string): string {
  const line = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((l) => l.split(' ')[4] === target)
  return line?.split(' ')[5] ?? ''
}

describe('sandbox helper', () => {
  let helper: SandboxHelper | undefined
  let dir = ''
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'initless-helper-'))
  })
  after(async () => {
    helper?.close()
    await rm(dir, { recursive: true, force: true })
  })
  /**
   * The helper provision.sh built from this source (a missing one fails here, in CI too), or the
   * build INITLESS_SANDBOX_HELPER names (a path).
   */
  const helperPath = () => {
    const named = process.env.INITLESS_SANDBOX_HELPER
    const path = sandboxHelperPath({ INITLESS_SANDBOX_HELPER: named?.startsWith('/') ? named : 'auto' })
    assert.ok(path, 'no sandbox helper built from this source: run scripts/provision.sh')
    return path
  }
  const get = () => (helper ??= createSandboxHelper({ path: helperPath() }))

  test('creates a namespace with eth0 addressed and routed, veth on the bridge; deletes it', async (t) => {
    if (!requireServices(t)) return
    const h = get()
    const name = `initless-hlp${process.pid}`
    const veth = `ilh${process.pid}`.slice(0, 15)
    const nsFile = `${NETNS_DIR}/${name}`
    const addr = '10.213.254.7'
    await h.request({
      op: 'netns-create',
      args: [nsFile, veth, macFor(addr), `${addr}/16`, '10.213.0.1', config.INITLESS_BRIDGE],
    })
    try {
      const inside = ip('-n', name, '-o', 'addr', 'show', 'dev', 'eth0')
      assert.match(inside, /inet 10\.213\.254\.7\/16/)
      assert.match(ip('-n', name, 'link', 'show', 'eth0'), new RegExp(`${macFor(addr)}.*`, 's'))
      assert.match(ip('-n', name, 'link', 'show', 'eth0'), /state UP|LOWER_UP/)
      assert.match(ip('-n', name, 'link', 'show', 'lo'), /UP/)
      assert.match(ip('-n', name, 'route'), /default via 10\.213\.0\.1 dev eth0/)
      assert.match(ip('link', 'show', veth), new RegExp(`master ${config.INITLESS_BRIDGE}`))
      assert.match(ip('link', 'show', veth), /state UP/)
      // A second one of the same name fails and leaves the first alone.
      await assert.rejects(
        h.request({
          op: 'netns-create',
          args: [
            nsFile,
            `${veth.slice(0, 13)}x`,
            macFor(addr),
            `${addr}/16`,
            '10.213.0.1',
            config.INITLESS_BRIDGE,
          ],
        }),
        (err: unknown) => isInitlessError(err) && /File exists/.test(err.message) && err.details.errno === 17,
      )
      assert.match(ip('-n', name, '-o', 'addr', 'show', 'dev', 'eth0'), /10\.213\.254\.7/)
    } finally {
      await h.request({ op: 'netns-delete', args: [nsFile, veth] })
    }
    assert.equal(existsSync(nsFile), false)
    assert.equal(hasLink(veth), false)
    // Deleting again is fine (cleanup is idempotent).
    await h.request({ op: 'netns-delete', args: [nsFile, veth] })
  })

  test('a new namespace passes frames as soon as it is made, while other veths come and go', async (t) => {
    // eth0 going up takes effect on the bridge's end of the pair only once the kernel's link watch
    // has run, which needs the RTNL lock that every veth deletion holds through an RCU grace
    // period; a packet sent before is lost, the host's first ARP request retried only after 1 s.
    // Each namespace is made while a second helper deletes the previous one; sysfs's brport/state
    // and operstate, and a dump of the links, report the state without settling it.
    if (!requireServices(t)) return
    const h = get()
    const churn = createSandboxHelper({ path: helperPath() })
    const bridge = config.INITLESS_BRIDGE
    const retransMs = Number(readFileSync(`/proc/sys/net/ipv4/neigh/${bridge}/retrans_time_ms`, 'utf8'))
    const made: [nsFile: string, veth: string][] = []
    try {
      for (let i = 0; i < 8; i++) {
        const addr = `10.213.254.${20 + i}`
        const name = `initless-hlpnew${i}-${process.pid}`
        const veth = `ilf${process.pid % 100000}x${i}`.slice(0, 15)
        const nsFile = `${NETNS_DIR}/${name}`
        // No cached entry: the first packet needs an ARP exchange through the new port.
        ip('neigh', 'flush', 'to', addr, 'dev', bridge)
        const previous = made.at(-1)
        const deleting = previous ? churn.request({ op: 'netns-delete', args: previous }) : undefined
        await h.request({
          op: 'netns-create',
          args: [nsFile, veth, macFor(addr), `${addr}/16`, '10.213.0.1', bridge],
        })
        made.push([nsFile, veth])
        const sys = (file: string) => readFileSync(`/sys/class/net/${file}`, 'utf8').trim()
        assert.equal(sys(`${veth}/brport/state`), '3', `${veth}: the bridge port is not forwarding yet`)
        assert.equal(sys(`${veth}/operstate`), 'up', veth)
        assert.equal(sys(`${bridge}/operstate`), 'up', bridge)
        assert.match(ip('-n', name, '-o', 'link'), /eth0@\S+ .*state UP/)
        // Nothing listens: the namespace's kernel refuses the connection, before any ARP retry.
        const ms = await refusedAfter(addr, 9)
        assert.ok(
          ms < retransMs,
          `${addr}: refused after ${ms.toFixed(0)} ms, an ARP retry is ${retransMs} ms`,
        )
        await deleting
      }
    } finally {
      for (const args of made) await churn.request({ op: 'netns-delete', args })
      churn.close()
    }
  })

  test('a reused address answers at once though the host was still resolving it', async (t) => {
    // Traffic that outlived an address's previous holder (a FIN the host retransmits after the
    // instance went) keeps the host's neighbour entry for it INCOMPLETE, three ARP requests one
    // retrans time apart. A packet to such an entry waits for the next request, not for the
    // instance: the first connection to a new namespace on that address would wait up to 1 s.
    if (!requireServices(t)) return
    const h = get()
    const bridge = config.INITLESS_BRIDGE
    const retransMs = Number(readFileSync(`/proc/sys/net/ipv4/neigh/${bridge}/retrans_time_ms`, 'utf8'))
    for (let i = 0; i < 3; i++) {
      const addr = `10.213.254.${40 + i}`
      const name = `initless-hlpreuse${i}-${process.pid}`
      const veth = `ilr${process.pid % 100000}x${i}`.slice(0, 15)
      const nsFile = `${NETNS_DIR}/${name}`
      ip('neigh', 'flush', 'to', addr, 'dev', bridge)
      // A datagram to the address while no namespace holds it: the host starts resolving it.
      await sendDatagram(addr, 9)
      assert.match(ip('neigh', 'show', 'to', addr, 'dev', bridge), /INCOMPLETE/)
      await h.request({
        op: 'netns-create',
        args: [nsFile, veth, macFor(addr), `${addr}/16`, '10.213.0.1', bridge],
      })
      try {
        const ms = await refusedAfter(addr, 9)
        assert.ok(
          ms < retransMs / 2,
          `${addr}: refused after ${ms.toFixed(0)} ms, behind the host's next ARP request (${retransMs} ms)`,
        )
      } finally {
        await h.request({ op: 'netns-delete', args: [nsFile, veth] })
        ip('neigh', 'flush', 'to', addr, 'dev', bridge)
      }
    }
  })

  test('a namespace that cannot be completed leaves nothing behind', async (t) => {
    if (!requireServices(t)) return
    const h = get()
    const name = `initless-hlpbad${process.pid}`
    const nsFile = `${NETNS_DIR}/${name}`
    const veth = `ilb${process.pid}`.slice(0, 15)
    // The gateway is outside eth0's subnet: the default route cannot be added (last step).
    await assert.rejects(
      h.request({
        op: 'netns-create',
        args: [nsFile, veth, macFor('10.213.254.8'), '10.213.254.8/16', '192.0.2.1', config.INITLESS_BRIDGE],
      }),
      (err: unknown) => isInitlessError(err) && /default route via 192\.0\.2\.1/.test(err.message),
    )
    assert.equal(existsSync(nsFile), false)
    assert.equal(hasLink(veth), false)
    await assert.rejects(
      h.request({
        op: 'netns-create',
        args: [nsFile, veth, macFor('10.213.254.8'), '10.213.254.8/16', '10.213.0.1', 'no-such-bridge'],
      }),
      /bridge no-such-bridge: No such device/,
    )
    assert.equal(existsSync(nsFile), false)
  })

  test('mounts an overlay and unmounts it (twice is fine)', async (t) => {
    if (!requireServices(t)) return
    const h = get()
    const [lower, upper, work, target] = ['lower', 'upper', 'work', 'mnt'].map((d) => join(dir, d)) as [
      string,
      string,
      string,
      string,
    ]
    await Promise.all([lower, upper, work, target].map((d) => mkdir(d)))
    await writeFile(join(lower, 'file'), 'from below')
    await h.request({
      op: 'mount-overlay',
      args: [target, `lowerdir=${lower},upperdir=${upper},workdir=${work},index=off`],
    })
    assert.equal(await readFile(join(target, 'file'), 'utf8'), 'from below')
    await writeFile(join(target, 'new'), 'written above')
    assert.equal(await readFile(join(upper, 'new'), 'utf8'), 'written above')
    await h.request({ op: 'umount', args: [target] })
    assert.equal(existsSync(join(target, 'file')), false)
    await h.request({ op: 'umount', args: [target] })
    await assert.rejects(
      h.request({ op: 'mount-overlay', args: [target, `lowerdir=${join(dir, 'missing')}`] }),
      /mount overlay at/,
    )
  })

  test('mounts a sized tmpfs (nosuid, nodev): writes past its size fail with ENOSPC', async (t) => {
    if (!requireServices(t)) return
    const h = get()
    const target = join(dir, 'layer')
    await mkdir(target)
    await h.request({ op: 'mount-tmpfs', args: [target, 'size=1048576,mode=0700'] })
    try {
      const fs = await statfs(target)
      assert.equal(fs.blocks * fs.bsize, 1024 * 1024)
      const options = mountOptions(target)
      assert.match(options, /nosuid/)
      assert.match(options, /nodev/)
      await assert.rejects(writeFile(join(target, 'big'), Buffer.alloc(2 * 1024 * 1024)), { code: 'ENOSPC' })
    } finally {
      await h.request({ op: 'umount', args: [target] })
    }
    assert.equal(existsSync(join(target, 'big')), false)
  })

  test('writes values in order, skips a missing optional file, fails on a missing required one', async (t) => {
    if (!requireServices(t)) return
    const h = get()
    const a = join(dir, 'a')
    const b = join(dir, 'sub', 'b')
    await h.request({ op: 'mkdir', args: [join(dir, 'sub'), join(dir, 'sub')] })
    await Promise.all([writeFile(a, ''), writeFile(b, '')])
    await h.request({ op: 'write', args: [a, 'one', '0', join(dir, 'nope'), 'x', '1', b, 'two', '0'] })
    assert.equal(await readFile(a, 'utf8'), 'one')
    assert.equal(await readFile(b, 'utf8'), 'two')
    await assert.rejects(
      h.request({ op: 'write', args: [join(dir, 'nope'), 'x', '0'] }),
      (err: unknown) => isInitlessError(err) && err.details.errno === 2 && /open .*nope/.test(err.message),
    )
  })

  test('spawns processes with their output file and fd 3, and reports their exits', async (t) => {
    if (!requireServices(t)) return
    const h = get()
    const out = join(dir, 'spawn.out')
    await writeFile(join(dir, 'three'), 'on fd 3')
    const p = await h.spawn({
      argv: ['sh', '-c', 'echo to-stdout; echo to-stderr >&2; cat <&3; exit 7'],
      output: out,
      fd3: join(dir, 'three'),
      mode: 'group',
      keepAlive: true,
    })
    assert.ok(p.pid > 1)
    assert.deepEqual(await p.exited, { code: 7, signal: null })
    assert.equal(await readFile(out, 'utf8'), 'to-stdout\nto-stderr\non fd 3')
    const killed = await h.spawn({ argv: ['sleep', '30'], output: out, mode: 'session', keepAlive: true })
    process.kill(killed.pid, 'SIGKILL')
    assert.deepEqual(await killed.exited, { code: null, signal: 9 })
    await assert.rejects(
      h.spawn({ argv: ['no-such-program-initless'], output: out, mode: 'group', keepAlive: false }),
      /spawn no-such-program-initless .*No such file or directory/,
    )
  })

  test('a status pipe on fd 3 reports ready at its byte, unready when closed or exited without one', async (t) => {
    if (!requireServices(t)) return
    const h = get()
    const out = join(dir, 'status.out')
    const spawnWith = (script: string) =>
      h.spawn({ argv: ['sh', '-c', script], output: out, status: true, mode: 'group', keepAlive: true })
    // Ready while it still runs: the report does not wait for the exit.
    const ready = await spawnWith('printf x >&3; exec 3>&-; sleep 30')
    assert.equal(await ready.status, 'ready')
    process.kill(ready.pid, 'SIGKILL')
    assert.deepEqual(await ready.exited, { code: null, signal: 9 })
    // Closed without a byte while it runs on, and exited without one.
    const closed = await spawnWith('exec 3>&-; sleep 30')
    assert.equal(await closed.status, 'unready')
    process.kill(closed.pid, 'SIGKILL')
    await closed.exited
    const exited = await spawnWith('exit 3')
    assert.equal(await exited.status, 'unready')
    assert.deepEqual(await exited.exited, { code: 3, signal: null })
    // A byte written right before exiting is reported as ready, before the exit.
    const order: string[] = []
    const quick = await spawnWith('printf x >&3')
    await Promise.all([quick.status!.then((s) => order.push(s)), quick.exited.then(() => order.push('exit'))])
    assert.deepEqual(order, ['ready', 'exit'])
    // Without `status`, fd 3 is not a pipe: nothing is reported.
    const plain = await h.spawn({ argv: ['true'], output: out, mode: 'group', keepAlive: true })
    assert.equal(plain.status, undefined)
    await plain.exited
    await assert.rejects(
      h.spawn({ argv: ['true'], output: out, fd3: out, status: true, mode: 'group', keepAlive: false }),
      /either a file or the status pipe/,
    )
  })

  test('spawns processes with transparent huge pages disabled (CRIU lazy restores need it)', async (t) => {
    if (!requireServices(t)) return
    const thpLine = (status: string) => /^THP_enabled:\s*(\d)$/m.exec(status)?.[1]
    // The control: this process, started by node, has THP as the host gives it.
    const own = thpLine(await readFile('/proc/self/status', 'utf8'))
    if (own === undefined) return t.skip('the kernel reports no THP_enabled (built without THP)')
    assert.equal(own, '1')
    const out = join(dir, 'thp.out')
    const p = await get().spawn({
      argv: ['cat', '/proc/self/status'],
      output: out,
      mode: 'group',
      keepAlive: true,
    })
    assert.deepEqual(await p.exited, { code: 0, signal: null })
    assert.equal(thpLine(await readFile(out, 'utf8')), '0')
  })

  test('bad requests get errors; the helper keeps serving', async (t) => {
    if (!requireServices(t)) return
    const h = get()
    await assert.rejects(h.request({ op: 'umount', args: ['a\tb'] }), /tab or newline/)
    await assert.rejects(
      h.request({ op: 'netns-create', args: ['/x', 'v', 'not-a-mac', '1.2.3.4/8', '1.2.3.1', 'br'] }),
      /bad MAC not-a-mac/,
    )
    await h.request({ op: 'ping', args: [] })
  })

  test('an idle helper does not keep the executor process alive', async (t) => {
    if (!requireServices(t)) return
    const script = [
      `import { createSandboxHelper } from ${JSON.stringify(new URL('../executor/adapters/sandbox-helper.ts', import.meta.url).href)}`,
      `const h = createSandboxHelper({ path: ${JSON.stringify(sandboxHelperPath({ INITLESS_SANDBOX_HELPER: 'auto' }))} })`,
      `await h.request({ op: 'ping', args: [] })`,
      `const p = await h.spawn({ argv: ['true'], output: '/dev/null', mode: 'group', keepAlive: false })`,
      `console.log(p.pid > 0 ? 'done' : 'no pid')`,
    ].join('\n')
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 20_000,
    })
    assert.equal(out.trim(), 'done')
  })

  test('a dead helper fails what it held, lets its children run on, and is started again', async (t) => {
    if (!requireServices(t)) return
    const path = sandboxHelperPath({ INITLESS_SANDBOX_HELPER: 'auto' })
    assert.ok(path)
    const h = createSandboxHelper({ path })
    try {
      const child = await h.spawn({
        argv: ['sleep', '0.5'],
        output: join(dir, 'orphan.out'),
        mode: 'session',
        keepAlive: true,
      })
      await h.request({ op: 'ping', args: [] })
      const helperPid = h.processId()
      assert.ok(helperPid)
      process.kill(helperPid, 'SIGKILL')
      // The child outlives the helper (init adopts it); its exit is still noticed, status unknown.
      assert.deepEqual(await child.exited, { code: null, signal: null })
      await h.request({ op: 'ping', args: [] })
      assert.notEqual(h.processId(), helperPid)
    } finally {
      h.close()
    }
  })
})
