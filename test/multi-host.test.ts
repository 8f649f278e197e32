/**
 * Two hosts on one registry. Host B is a network namespace this test makes (its own bridge and
 * subnet, a link to the root namespace, Redis reached over that link); host A is the root namespace
 * with the gateway. B's instance is reachable from A's gateway only through the route A's
 * executor adds from B's heartbeat; a third executor claiming B's subnet is refused. Both hosts
 * use an OCI registry (Debian's docker-registry) of this test's own on a free 127.0.0.1 port: a
 * deploy's image travels through it by digest.
 */
import assert from 'node:assert/strict'
import { execFile, execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { HOST_GONE_MS, type InstanceRecord } from '../shared/contracts.ts'
import { createRedis, deleteKeys } from '../shared/redis.ts'
import { createRedisRegistry, type InstanceRegistry } from '../shared/registry.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { builtEntry } from '../cli/launcher.ts'
import { agent, freePort, http, parseServerTiming, startProcess, type ManagedProcess } from './support/e2e.ts'
import { REDIS_URL, requireServices } from './support/integration.ts'
import { hostResources, NO_LEAKS } from './support/leaks.ts'
import { registerFunctions } from './support/functions.ts'
import { deployFunction } from '../cli/deploy-client.ts'
import { createRedisFunctionRegistry } from '../shared/function-registry.ts'

const ROOT = join(import.meta.dirname, '..')
const FIXTURES = join(import.meta.dirname, 'fixtures', 'functions')
const HOST_B_NS = 'ilhost-b'
const LINK_A = '10.212.0.1'
const LINK_B = '10.212.0.2'
const SUBNET_A = '10.213.0.0/16'
const SUBNET_B = '10.214.0.0/16'

const execFileAsync = promisify(execFile)
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8' })
const routes = (ns?: string) =>
  sh('ip', [...(ns ? ['-n', ns] : []), 'route', 'show', 'proto', '213'])
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
const dockerUserRules = () => {
  try {
    return sh('iptables', ['-w', '-S', 'DOCKER-USER'])
  } catch {
    return undefined // no Docker chain on this host
  }
}

/** Remove host B's namespace (and with it its link, bridge and routes) if it exists. */
function dropHostB(): void {
  try {
    execFileSync('ip', ['netns', 'del', HOST_B_NS], { stdio: 'ignore' })
  } catch {
    // not there
  }
}

async function until<T>(
  what: string,
  get: () => Promise<T> | T,
  ok: (v: T) => boolean,
  ms: number,
): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const v = await get()
    if (ok(v)) return v
    if (Date.now() > deadline) throw new Error(`${what}: still ${JSON.stringify(v)} after ${ms} ms`)
    await new Promise((r) => setTimeout(r, 200))
  }
}

/** Debian's docker-registry serving `dir` on 127.0.0.1:`port`; its access log goes to `dir`/log. */
async function startImageRegistry(dir: string, port: number): Promise<ChildProcess> {
  await writeFile(
    join(dir, 'config.yml'),
    `version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: ${dir}/data\n` +
      `http:\n  addr: 127.0.0.1:${port}\n`,
  )
  const { openSync } = await import('node:fs')
  const log = openSync(join(dir, 'log'), 'a')
  const child = spawn('docker-registry', ['serve', join(dir, 'config.yml')], {
    stdio: ['ignore', log, log],
  })
  await until(
    'image registry answers',
    () =>
      fetch(`http://127.0.0.1:${port}/v2/`)
        .then((r) => r.status)
        .catch(() => 0),
    (status) => status === 200,
    10_000,
  )
  return child
}

/** Scale py-hosts to zero; resolves with the instance its minimum comes back as (one not `seen`). */
async function restartMinimum(
  reg: InstanceRegistry,
  seen: ReadonlySet<string>,
  round: number,
): Promise<InstanceRecord> {
  await reg.publish({ type: 'function', fn: 'py-hosts', action: 'scale-to-zero' })
  const [next] = await until(
    `round ${round}: a new instance`,
    () => reg.list('py-hosts'),
    (l) => l.length === 1 && l[0]!.state === 'ready' && !seen.has(l[0]!.id),
    60_000,
  )
  return next!
}

/**
 * Scale py-hosts to zero and have its minimum come back on `host` (running `proc`): `other` is
 * stopped (SIGSTOP) from the moment no instance is left until the new one is ready. If `other`
 * reserved it in between, it is let go on and the round repeats.
 */
async function restartMinimumOn(
  reg: InstanceRegistry,
  proc: ManagedProcess,
  other: ManagedProcess,
  host: string,
): Promise<InstanceRecord> {
  const pid = other.child.pid
  assert.ok(pid, 'the other host runs')
  for (let round = 0; round < 5; round++) {
    // Scale to zero spares restores under way (the instance manager stops only live instances),
    // and a host that has just baked may be restoring the minimum right now: start from a
    // settled registry, or such an instance outlives the event and the round waits forever.
    const settled = await until(
      `round ${round}: no restore of py-hosts under way`,
      () => reg.list('py-hosts'),
      (l) => l.every((i) => i.state !== 'starting'),
      60_000,
    )
    const before = new Set(settled.map((i) => i.id))
    await reg.publish({ type: 'function', fn: 'py-hosts', action: 'scale-to-zero' })
    // Polled fast: the window between the last instance going and a reaper's reserve is one
    // reap interval (300 ms).
    let left = await reg.list('py-hosts')
    for (const deadline = Date.now() + 60_000; left.some((i) => before.has(i.id));) {
      if (Date.now() > deadline)
        assert.fail(
          `py-hosts not scaled to zero: ${JSON.stringify(left)}\n${proc.output().slice(-2000)}\n${other.output().slice(-2000)}`,
        )
      await new Promise((r) => setTimeout(r, 10))
      left = await reg.list('py-hosts')
    }
    process.kill(pid, 'SIGSTOP')
    let taken = ''
    try {
      // A reserve the other host had already written reaches Redis well within this.
      await new Promise((r) => setTimeout(r, 50))
      taken = (await reg.list('py-hosts')).find((i) => i.hostId !== host)?.id ?? ''
      if (!taken) {
        const [next] = await until(
          `an instance on ${host}`,
          () => reg.list('py-hosts'),
          (l) => l.length === 1 && l[0]!.state === 'ready',
          60_000,
        ).catch((err: Error) => assert.fail(`${err.message}\n${proc.output().slice(-3000)}`))
        assert.equal(next!.hostId, host)
        return next!
      }
    } finally {
      process.kill(pid, 'SIGCONT')
    }
    // The other host was first: its restore finishes (scale-to-zero spares restores under way)
    // before the next round.
    await until(
      `round ${round}: ${taken} ready`,
      () => reg.list('py-hosts'),
      (l) => l.length === 1 && l[0]!.id === taken && l[0]!.state === 'ready',
      60_000,
    )
  }
  assert.fail(`the minimum of py-hosts never came back on ${host}`)
}

interface Relay {
  /** Cut host B off Redis: open connections are reset, new ones refused. */
  cut(): Promise<void>
  /** Let it back in. */
  heal(): Promise<void>
  close(): Promise<void>
}

/** Redis as host B sees it: a TCP relay on A's end of the link to the local Redis. */
function relayRedis(port: number): Relay {
  const target = new URL(REDIS_URL)
  const sockets = new Set<Socket>()
  let server: Server | undefined
  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const s = createServer((client) => {
        const upstream = connect(Number(target.port || 6379), target.hostname)
        for (const sock of [client, upstream]) {
          sockets.add(sock)
          sock.on('close', () => sockets.delete(sock))
          sock.on('error', () => undefined)
        }
        client.pipe(upstream).pipe(client)
      })
      s.once('error', reject).listen(port, LINK_A, () => resolve())
      server = s
    })
  const cut = async () => {
    const s = server
    server = undefined
    for (const sock of sockets) sock.resetAndDestroy()
    if (s) await new Promise((r) => s.close(r))
  }
  return { cut, heal: listen, close: cut }
}

describe('several hosts', () => {
  const tag = randomBytes(4).toString('hex')
  const prefix = `test-hosts-${tag}`
  const queueName = `test-hosts-${randomUUID()}`
  const stateA = `/var/lib/initless-test/host-a-${tag}`
  const stateB = `/var/lib/initless-test/host-b-${tag}`
  const stateC = `/var/lib/initless-test/host-c-${tag}`
  const procs: ManagedProcess[] = []
  let relay: Relay | undefined
  let functionsDir = ''
  // Set up by the first test, used by the next ones (they run in order).
  let common: Record<string, string> = {}
  let a: ManagedProcess | undefined
  let b: ManagedProcess | undefined
  let gateway: ManagedProcess | undefined
  let registry: InstanceRegistry | undefined
  let onB: InstanceRecord | undefined
  let port = 0
  let rules: string | undefined
  let adminToken = ''
  let imageRegistry: ChildProcess | undefined
  let registryDir = ''
  let registryAddress = ''

  const redis = createRedis(REDIS_URL, { name: 'initless-hosts-test', lazy: true })

  after(async () => {
    for (const p of procs.reverse()) await p.stop('SIGTERM', 60_000)
    imageRegistry?.kill('SIGTERM')
    agent.destroy()
    await relay?.close()
    await deleteKeys(redis, [`${prefix}:*`, `bull:${queueName}:*`, `bull:${queueName}-deploy:*`]).catch(
      () => undefined,
    )
    redis.disconnect()
    // Peer routes stay when an executor stops (a gateway may still use them): this test's goes here.
    try {
      execFileSync('ip', ['route', 'del', SUBNET_B, 'proto', '213'], { stdio: 'ignore' })
    } catch {
      // not there
    }
    dropHostB()
    // What the deploy pushed and pulled: the images stay only under their registry reference.
    try {
      const refs = sh('docker', ['images', '--digests', '--format', '{{.Repository}}@{{.Digest}}'])
      for (const ref of refs.split('\n').filter((r) => registryAddress && r.startsWith(registryAddress)))
        execFileSync('docker', ['rmi', ref], { stdio: 'ignore' })
    } catch {
      // nothing pulled
    }
    for (const dir of [stateA, stateB, stateC, functionsDir, registryDir].filter(Boolean))
      await rm(dir, { recursive: true, force: true })
  })

  test('a gateway on host A serves an instance on host B through the route its executor added', async (t) => {
    if (!requireServices(t)) return
    // Host B: a network namespace linked to the root one.
    dropHostB()
    for (const cmd of [
      `netns add ${HOST_B_NS}`,
      `link add ilhb-a type veth peer name ilhb-b netns ${HOST_B_NS}`,
      `addr add ${LINK_A}/30 dev ilhb-a`,
      'link set ilhb-a up',
      `-n ${HOST_B_NS} addr add ${LINK_B}/30 dev ilhb-b`,
      `-n ${HOST_B_NS} link set ilhb-b up`,
      `-n ${HOST_B_NS} link set lo up`,
    ])
      execFileSync('ip', cmd.split(' '))
    const redisPort = await freePort()
    relay = relayRedis(redisPort)
    await relay.heal()

    functionsDir = await mkdtemp(join(tmpdir(), 'initless-hosts-'))
    await cp(join(FIXTURES, 'py-ok'), join(functionsDir, 'py-hosts'), { recursive: true })
    const manifest = join(functionsDir, 'py-hosts', 'function.yaml')
    await writeFile(
      manifest,
      (await readFile(manifest, 'utf8')).replace(
        '  idleTimeout: 2s',
        '  idleTimeout: 60s\n  minInstances: 1',
      ),
    )
    await registerFunctions(redis, prefix, functionsDir)
    registryDir = await mkdtemp(join(tmpdir(), 'initless-oci-'))
    const registryPort = await freePort()
    registryAddress = `127.0.0.1:${registryPort}`
    imageRegistry = await startImageRegistry(registryDir, registryPort)
    common = {
      INITLESS_QUEUE_NAME: queueName,
      INITLESS_KEY_PREFIX: prefix,
      INITLESS_FUNCTIONS_DIR: functionsDir,
      INITLESS_REAP_INTERVAL: '300ms',
      INITLESS_LOG_LEVEL: 'info',
      // Host B's engine is the root namespace's dockerd: it reaches the registry here too.
      INITLESS_IMAGE_REGISTRY: registryAddress,
    }

    // Host B first: its reaper starts the function's one instance there.
    b = startProcess('executor-b', 'executor', {
      env: {
        ...common,
        INITLESS_HOST_ID: `host-b-${tag}`,
        INITLESS_STATE_DIR: stateB,
        INITLESS_BRIDGE: 'initlessb0',
        INITLESS_SUBNET: SUBNET_B,
        INITLESS_ADVERTISE_ADDRESS: LINK_B,
        INITLESS_SHUTDOWN_TIMEOUT: '5s',
        INITLESS_REDIS_URL: `redis://${LINK_A}:${redisPort}`,
      },
      wrap: ['nsenter', `--net=/run/netns/${HOST_B_NS}`],
    })
    procs.push(b)
    registry = createRedisRegistry({ redis, logger: createSilentLogger(), prefix })
    const reg = registry
    ;[onB] = await until(
      'an instance on host B',
      () => reg.list('py-hosts'),
      (l: InstanceRecord[]) => l.length === 1 && l[0]?.state === 'ready',
      300_000,
    ).catch((err: Error) => assert.fail(`${err.message}\n${b!.output().slice(-3000)}`))
    assert.equal(onB?.hostId, `host-b-${tag}`)
    assert.match(onB?.address?.host ?? '', /^10\.214\./)
    assert.deepEqual(routes(), [], 'no route to host B before host A has an executor')

    // Host A: an executor in the root namespace, and the gateway.
    a = startProcess('executor-a', 'executor', {
      env: {
        ...common,
        INITLESS_HOST_ID: `host-a-${tag}`,
        INITLESS_STATE_DIR: stateA,
        INITLESS_SUBNET: SUBNET_A,
        INITLESS_ADVERTISE_ADDRESS: LINK_A,
        INITLESS_REDIS_URL: REDIS_URL,
      },
    })
    procs.push(a)
    await until(
      'routes both ways',
      () => [routes(), routes(HOST_B_NS)],
      ([ra, rb]) => !!ra?.length && !!rb?.length,
      10_000,
    ).catch((err: Error) => assert.fail(`${err.message}\n${a!.output().slice(-3000)}`))
    assert.deepEqual(routes(), [`${SUBNET_B} via ${LINK_B} dev ilhb-a realm 213`])
    assert.deepEqual(routes(HOST_B_NS), [`${SUBNET_A} via ${LINK_A} dev ilhb-b realm 213`])
    // What `initless hosts` says in host A's network: both hosts live; a route to B only (A's
    // subnet is on a bridge here).
    // Not execFileSync: host B reaches Redis through this process (relayRedis).
    const { stdout } = await execFileAsync(process.execPath, [builtEntry('cli'), '--json', 'hosts'], {
      cwd: ROOT,
      encoding: 'utf8',
      env: {
        ...process.env,
        ...common,
        INITLESS_HOST_ID: `gateway-only-${tag}`,
        INITLESS_REDIS_URL: REDIS_URL,
      },
    })
    const listed = JSON.parse(stdout) as {
      hosts: { hostId: string; state: string }[]
      routes: { subnet: string; via: string }[]
    }
    assert.deepEqual(
      listed.hosts.map((h) => [h.hostId, h.state]),
      [
        [`host-a-${tag}`, 'live'],
        [`host-b-${tag}`, 'live'],
      ],
    )
    assert.deepEqual(
      listed.routes.map((r) => [r.subnet, r.via]),
      [[SUBNET_B, LINK_B]],
    )
    rules = dockerUserRules()
    if (rules !== undefined) {
      assert.match(rules, new RegExp(`-A DOCKER-USER -d ${SUBNET_A} .*--comment initless -j ACCEPT`))
      assert.match(rules, new RegExp(`-A DOCKER-USER -s ${SUBNET_A} .*--comment initless -j ACCEPT`))
    }

    port = await freePort()
    gateway = startProcess('gateway', 'gateway', {
      env: {
        ...common,
        INITLESS_GATEWAY_HOST: '127.0.0.1',
        INITLESS_GATEWAY_PORT: String(port),
        INITLESS_ADMIN_TOKEN: (adminToken = randomBytes(24).toString('hex')),
        INITLESS_REDIS_URL: REDIS_URL,
      },
    })
    procs.push(gateway)
    await until(
      'gateway ready',
      () => http(port, 'GET', '/readyz').catch(() => undefined),
      (r) => r?.status === 200,
      60_000,
    )
    await a.waitForLog((r) => r.msg === 'functions prepared', 300_000)

    const res = await http(port, 'GET', '/fn/py-hosts/work', { timeoutMs: 10_000 })
    assert.equal(res.status, 200, res.text)
    assert.ok(parseServerTiming(res.headers['server-timing']).has('warm'), 'served by the instance on host B')
    assert.deepEqual(
      (await reg.list('py-hosts')).map((i) => i.id),
      [onB.id],
      'no other instance was started',
    )
  })

  test("an executor claiming part of a live host's subnet is refused before it touches anything", async (t) => {
    if (!requireServices(t)) return
    assert.ok(registry, 'set up by the first test')
    const c = startProcess('executor-c', 'executor', {
      env: {
        ...common,
        INITLESS_HOST_ID: `host-c-${tag}`,
        INITLESS_STATE_DIR: stateC,
        INITLESS_SUBNET: '10.214.128.0/17',
        INITLESS_REDIS_URL: REDIS_URL,
      },
    })
    procs.push(c)
    const refused = await c.waitForLog((r) => r.msg === 'cannot start', 60_000)
    assert.equal(refused.code, 'ERR_SUBNET_IN_USE')
    assert.match(String(refused.err), new RegExp(`overlaps ${SUBNET_B} of host host-b-${tag}`))
    await until(
      'executor C exits',
      () => c.isRunning(),
      (running) => !running,
      10_000,
    )
    assert.equal((await c.stop()).code, 1)
    assert.equal(
      c.records().some((r) => r.msg === 'reconciled'),
      false,
    )
  })

  test('a host cut off from Redis leaves the registry and the routes; back, it stops what nobody knows', async (t) => {
    if (!requireServices(t)) return
    assert.ok(registry && onB && a && b && relay, 'set up by the first test')
    const [reg, gone, hostA] = [registry, onB, a]

    // Host B loses Redis (a partition, a machine gone): after HOST_GONE_MS host A's executor drops
    // B's instance from the registry and its route to B; the minimum comes back on A, and the
    // gateway serves from there. B's instance itself runs on, unknown to everyone.
    await relay.cut()
    await until(
      `host B's instance dropped`,
      () => reg.list('py-hosts'),
      (l) => !l.some((i) => i.id === gone.id),
      HOST_GONE_MS + 45_000,
    ).catch((err: Error) => assert.fail(`${err.message}\n${hostA.output().slice(-3000)}`))
    const dropped = await hostA.waitForLog(
      (r) => r.msg === 'instance of a silent host removed from the registry',
      1_000,
    )
    assert.equal(dropped.id, gone.id)
    // Silent means since its last heartbeat, which came up to a beat before the cut.
    const lastBeat = (await reg.executors()).find((h) => h.hostId === `host-b-${tag}`)?.at
    assert.ok(lastBeat !== undefined)
    assert.ok(Date.parse(String(dropped.time)) - lastBeat > HOST_GONE_MS, 'not before HOST_GONE_MS')
    await until(
      'route to host B removed',
      () => routes(),
      (r) => r.length === 0,
      5_000,
    )
    const afterLoss = await http(port, 'GET', '/fn/py-hosts/work', { timeoutMs: 60_000 })
    assert.equal(afterLoss.status, 200, afterLoss.text)
    assert.ok((await reg.list('py-hosts')).every((i) => i.hostId === `host-a-${tag}`))

    // B comes back: its reaper stops the instance the registry no longer has; A routes to B again.
    await relay.heal()
    await b.waitForLog(
      (r) => r.msg === 'instance stopped' && r.id === gone.id && r.reason === 'no longer in the registry',
      30_000,
    )
    await until(
      'route to host B again',
      () => routes(),
      (r) => r.length === 1,
      10_000,
    )
  })

  test('scaled to zero, the minimum comes back on either host and is served', async (t) => {
    if (!requireServices(t)) return
    assert.ok(registry && onB, 'set up by the first test')
    const reg = registry
    // The minimum's instance settled (a restore under way when scale-to-zero arrives is not
    // stopped: it would be the instance this waits for).
    await until(
      'one ready instance',
      () => reg.list('py-hosts'),
      (l) => l.length === 1 && l[0]!.state === 'ready',
      60_000,
    )
    // Scaled to zero, the minimum is started again by whichever executor reserves it first: the
    // gateway reaches it on either host.
    const servedBy = new Set<string>()
    let seen = new Set([onB.id, ...(await reg.list('py-hosts')).map((i) => i.id)])
    for (let round = 0; round < 4; round++) {
      const next = await restartMinimum(reg, seen, round)
      seen = new Set([...seen, next.id])
      servedBy.add(next.hostId)
      const again = await http(port, 'GET', '/fn/py-hosts/work', { timeoutMs: 10_000 })
      assert.equal(again.status, 200, `round ${round} (${next.hostId}): ${again.text}`)
    }
    t.diagnostic(`instances started on ${[...servedBy].join(', ')}`)
  })

  test('a deploy travels through the image registry: host B, back, pulls it by digest and bakes before it serves', async (t) => {
    if (!requireServices(t)) return
    assert.ok(registry && a && b && gateway && port && relay, 'set up by the first test')
    const [reg, link] = [registry, relay]
    const byHost = new Map([
      [`host-a-${tag}`, a],
      [`host-b-${tag}`, b],
    ])
    const marks = new Map([...byHost].map(([h, p]) => [h, p.mark()]))
    const dir = join(functionsDir, 'py-hosts')
    const manifest = join(dir, 'function.yaml')
    await writeFile(
      manifest,
      (await readFile(manifest, 'utf8')).replace('GREETING: hello', 'GREETING: pulled'),
    )
    // B is away during the deploy (well under HOST_GONE_MS): host A takes the deploy job, and B
    // hears of the new version only when it is back, as a host that joins later does.
    await link.cut()
    let version = ''
    let digest = ''
    const functions = createRedisFunctionRegistry({ redis, logger: createSilentLogger(), prefix })
    try {
      const deployed = await deployFunction(
        { url: `http://127.0.0.1:${port}`, token: adminToken },
        { name: 'py-hosts', dir },
      )
      assert.equal(deployed.status, 'deployed')
      version = deployed.version
      digest =
        (await functions.get('py-hosts'))?.versions.find((v) => v.version === version)?.image?.digest ?? ''
      assert.match(
        digest,
        new RegExp(`^${registryAddress.replace(/\./g, '\\.')}/initless/fn-py-hosts@sha256:[0-9a-f]{64}$`),
      )
      // Host A ran the deploy (built, pushed), and took its own image by digest at the activation.
      const markA = marks.get(`host-a-${tag}`)
      assert.ok(
        a.records(markA).some((r) => r.msg === 'deploy started' && r.version === version),
        'host A ran the deploy',
      )
      await a.waitForLog((r) => r.msg === 'image pulled' && r.ref === digest, 60_000, markA)
      // Host B's engine is this machine's too: the image leaves it, so that B's pull must fetch
      // it from the registry as a host of its own would.
      // `rmi -f` only untags an image a container still uses (its config stays, and a pull by
      // digest then fetches no blob): remove it until it is gone by ID, not just by reference.
      const id = sh('docker', ['image', 'inspect', '-f', '{{.Id}}', digest]).trim()
      const isPresent = (ref: string) => {
        try {
          execFileSync('docker', ['image', 'inspect', ref], { stdio: 'ignore' })
          return true
        } catch {
          return false
        }
      }
      for (const until = Date.now() + 30_000; isPresent(id);) {
        assert.ok(Date.now() < until, `image ${id} is still in the engine (a container uses it?)`)
        // Refused while a running container uses the untagged image: try again.
        spawnSync('docker', ['rmi', '-f', id], { stdio: 'ignore' })
        if (isPresent(id)) await new Promise((r) => setTimeout(r, 200))
      }
      assert.equal(isPresent(digest), false)
    } finally {
      await link.heal()
    }
    const [other, otherProc] = [`host-b-${tag}`, b]
    await otherProc.waitForLog((r) => r.msg === 'image pulled' && r.ref === digest, 120_000, marks.get(other))
    await otherProc.waitForLog(
      (r) => r.msg === 'bake recorded' && r.version === version,
      300_000,
      marks.get(other),
    )
    assert.ok(
      !otherProc.records(marks.get(other)).some((r) => r.msg === 'image build started'),
      `${other} built nothing`,
    )
    const registryLog = await readFile(join(registryDir, 'log'), 'utf8')
    assert.match(registryLog, /"PUT \/v2\/initless\/fn-py-hosts\/manifests\//, 'the deploy pushed the image')
    assert.ok(
      registryLog.includes(`"GET /v2/initless/fn-py-hosts/manifests/${digest.split('@')[1]}`),
      "B's pull fetched the manifest by digest",
    )
    assert.match(registryLog, /"GET \/v2\/initless\/fn-py-hosts\/blobs\/sha256:/, "and the image's blobs")
    assert.doesNotThrow(() => execFileSync('docker', ['image', 'inspect', digest], { stdio: 'ignore' }))
    const bakedOn = await until(
      'both hosts recorded their bake',
      async () =>
        Object.keys(
          (await functions.get('py-hosts'))?.versions.find((v) => v.version === version)?.bakedOn ?? {},
        ),
      (hosts) => hosts.length === 2,
      60_000,
    )
    assert.deepEqual(bakedOn.sort(), [...byHost.keys()].sort())

    // The new version is served, by an instance on host B too. Which executor reserves a minimum
    // is a race (under load host A, nearer Redis than B behind its relay, won twelve rounds in a
    // row), so host A is paused while the minimum comes back: only B can take it.
    const onHostB = await restartMinimumOn(reg, b, a, `host-b-${tag}`)
    assert.equal(onHostB.version, version)
    const res = await http(port, 'GET', '/fn/py-hosts/work', { timeoutMs: 10_000 })
    assert.equal(res.status, 200, res.text)
    assert.match(res.text, /^pulled /)
    // No host had an instance of the new version before it had baked that version.
    for (const [h, p] of byHost) {
      const records = p.records(marks.get(h))
      const baked = records.find((r) => r.msg === 'bake recorded' && r.version === version)
      for (const r of records.filter((x) => x.msg === 'instance ready' && x.version === version))
        assert.ok(
          baked && Date.parse(String(r.time)) >= Date.parse(String(baked.time)),
          `${h}: instance ${String(r.id)} ready before its bake was recorded`,
        )
    }
  })

  test('stopped: the forwarding rules go, the peer route stays; cut off from Redis, B still stops cleanly', async (t) => {
    if (!requireServices(t)) return
    assert.ok(a && b && gateway && relay, 'set up by the first test')
    // Stopping A removes its forwarding rules; its peer route stays for this host's gateway.
    await gateway.stop()
    await a.stop()
    if (rules !== undefined)
      assert.doesNotMatch(dockerUserRules() ?? '', new RegExp(SUBNET_A.replace(/\./g, '\\.')))
    assert.deepEqual(routes(), [`${SUBNET_B} via ${LINK_B} dev ilhb-a realm 213`])
    // Its graceful close waits for Redis: past INITLESS_SHUTDOWN_TIMEOUT it is forced, and the
    // instances are stopped anyway (this hung until SIGKILL, and left B's instance running).
    await relay.cut()
    await new Promise((r) => setTimeout(r, 3_000)) // its clients now reconnecting, in vain
    const exit = await b.stop('SIGTERM', 50_000)
    assert.equal(exit.code, 0, b.output().slice(-3000))
    assert.ok(b.records().some((r) => r.msg === 'stopped'))
    for (const dir of [stateA, stateB])
      assert.deepEqual(hostResources({ runcRoot: '/run/initless/runc', stateDir: dir }), NO_LEAKS)
  })
})
