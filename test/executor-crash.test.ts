import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { cp, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import Docker from 'dockerode'
import { EXPORT_LABEL } from '../executor/adapters/docker.ts'
import { httpOnce } from '../executor/adapters/probe.ts'
import { createBullmqRestoreQueue, type BullmqRestoreQueue } from '../shared/bullmq-restore-queue.ts'
import type { RestoreJobResult } from '../shared/contracts.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { createRedis, deleteKeys, type Redis } from '../shared/redis.ts'
import { createRedisRegistry, type InstanceRegistry } from '../shared/registry.ts'
import { createRestoreClient, type RestoreClient } from '../shared/restore-client.ts'
import type { RestoreOutcome } from '../shared/restore-queue.ts'
import { builtEntry } from '../cli/launcher.ts'
import { isCI, REDIS_URL, requireServices } from './support/integration.ts'
import { registerFunctions } from './support/functions.ts'
import { hostResources, NO_LEAKS } from './support/leaks.ts'

const ROOT = join(import.meta.dirname, '..')
const FIXTURES = join(import.meta.dirname, 'fixtures', 'functions')

describe('executor process: kill -9 and restart', () => {
  const tag = randomBytes(4).toString('hex')
  const env: Record<string, string> = {
    INITLESS_STATE_DIR: `/var/lib/initless-test/crash-${tag}`,
    INITLESS_QUEUE_NAME: `test-${randomUUID()}`,
    INITLESS_KEY_PREFIX: `test-${tag}`,
    INITLESS_HOST_ID: `crash-${tag}`,
    INITLESS_REAP_INTERVAL: '500ms',
    INITLESS_LOG_LEVEL: 'info',
  }
  let functionsDir = ''
  let redis: Redis | undefined
  let registry: InstanceRegistry | undefined
  let queue: BullmqRestoreQueue | undefined
  let restores: RestoreClient | undefined
  /** Every restore outcome seen since before(), by instance id. */
  const outcomes = new Map<string, RestoreOutcome>()
  const children: ChildProcess[] = []
  const logs: string[] = []

  function startExecutor(): ChildProcess {
    const child = spawn(process.execPath, [builtEntry('executor')], {
      cwd: ROOT,
      env: { ...process.env, ...env, INITLESS_FUNCTIONS_DIR: functionsDir },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const log = { text: '' }
    logs.push('')
    const i = logs.length - 1
    child.stdout?.on('data', (d: Buffer) => (logs[i] = log.text += d.toString()))
    child.stderr?.on('data', (d: Buffer) => (logs[i] = log.text += d.toString()))
    children.push(child)
    return child
  }
  const resources = () => hostResources({ runcRoot: '/run/initless/runc', stateDir: env.INITLESS_STATE_DIR! })
  async function waitLog(re: RegExp, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!re.test(logs[logs.length - 1] ?? '')) {
      if (Date.now() > deadline)
        throw new Error(`executor never logged ${re}; log:\n${(logs[logs.length - 1] ?? '').slice(-3000)}`)
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  async function stop(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise((r) => child.once('exit', r))
    child.kill(signal)
    await exited
  }
  async function enqueue(runtime?: 'lazy' | 'eager'): Promise<string> {
    const instanceId = await restores!.start({
      fn: 'py-ok',
      maxInstances: 5,
      reason: 'demand',
      ...(runtime ? { options: { runtime } } : {}),
    })
    assert.ok(instanceId, 'py-ok has room for another instance')
    return instanceId
  }
  async function jobResult(id: string, timeoutMs: number): Promise<RestoreJobResult> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const outcome = outcomes.get(id)
      if (outcome?.ok) return outcome.result
      if (outcome) throw new Error(`job failed: ${outcome.failure.code}: ${outcome.failure.message}`)
      if (Date.now() > deadline) throw new Error(`job ${id} did not end within ${timeoutMs} ms`)
      await new Promise((r) => setTimeout(r, 200))
    }
  }
  /**
   * Whatever a test that failed half-way left (a killed executor's instances, sandboxes, daemons):
   * a fresh executor on the state dir reconciles it, and its clean shutdown leaves nothing.
   */
  async function cleanUpLeftovers(): Promise<void> {
    // Namespaces are listed host-wide (other tests' too): the state dir's own resources decide.
    const left = resources()
    if (left.containers.length + left.mounts.length + left.criu.length === 0) return
    const sweeper = startExecutor()
    try {
      await waitLog(/"msg":"reconciled"/, 60_000)
    } finally {
      await stop(sweeper, 'SIGTERM')
    }
  }

  before(async () => {
    if (process.getuid?.() !== 0 && !isCI) return
    functionsDir = await mkdtemp(join(tmpdir(), 'initless-crash-fns-'))
    await cp(join(FIXTURES, 'py-ok'), join(functionsDir, 'py-ok'), { recursive: true })
    redis = createRedis(REDIS_URL)
    registry = createRedisRegistry({ redis, logger: createSilentLogger(), prefix: env.INITLESS_KEY_PREFIX })
    queue = createBullmqRestoreQueue({
      redisUrl: REDIS_URL,
      logger: createSilentLogger(),
      queueName: env.INITLESS_QUEUE_NAME!,
    })
    await queue.ready()
    queue.onOutcome((o) => outcomes.set(o.instanceId, o))
    restores = createRestoreClient({ registry, queue })
    await registerFunctions(redis, env.INITLESS_KEY_PREFIX!, functionsDir)
  })
  after(async () => {
    for (const c of children) await stop(c, 'SIGKILL')
    if (functionsDir) await cleanUpLeftovers()
    await queue?.close()
    if (redis) {
      await deleteKeys(redis, [`${env.INITLESS_KEY_PREFIX}:*`, `bull:${env.INITLESS_QUEUE_NAME!}:*`])
      redis.disconnect()
    }
    await rm(functionsDir, { recursive: true, force: true })
    await rm(env.INITLESS_STATE_DIR!, { recursive: true, force: true })
  })

  test('kill -9 in the middle of a restore: the job completes after the restart and nothing leaks', async (t) => {
    if (!requireServices(t) || !queue) return
    const first = startExecutor()
    await waitLog(/"msg":"executor started"/, 60_000)
    // The first restore waits for the function's first bake: kill the executor while it runs.
    const id = await enqueue()
    await waitLog(/"msg":"booting"/, 120_000)
    await stop(first, 'SIGKILL')
    const leftovers = resources()
    assert.ok(
      leftovers.containers.length + leftovers.namespaces.length + leftovers.mounts.length > 0,
      'the crash left a bake sandbox behind',
    )

    const second = startExecutor()
    await waitLog(/"msg":"reconciled"/, 60_000)
    // BullMQ sees the dead worker's lock lapse and hands the job to the new executor.
    const result = await jobResult(id, 120_000)
    assert.equal(result.instanceId, id)
    const res = await httpOnce(result.address.host, result.address.port, '/')
    assert.equal(res.body, 'hello 3\n')
    assert.equal((await registry!.get('py-ok', id))?.state, 'ready')

    await stop(second, 'SIGTERM')
    assert.equal(second.exitCode, 0)
    assert.deepEqual(resources(), NO_LEAKS)
    assert.deepEqual(await registry!.list('py-ok'), [], 'a clean shutdown removes its instances')
  })

  test('reconciliation after a crash: zero leftover mounts, namespaces, runc containers and daemons', async (t) => {
    if (!requireServices(t) || !queue) return
    const first = startExecutor()
    await waitLog(/"msg":"functions prepared"/, 120_000)
    const ids = [await enqueue('lazy'), await enqueue('eager')]
    for (const id of ids) await jobResult(id, 60_000)
    await stop(first, 'SIGKILL')
    const left = resources()
    assert.equal(left.containers.length, 2)
    assert.equal(left.namespaces.length, 2)
    assert.ok(left.mounts.length >= 2)

    // A rootfs export the crash cut short leaves its container; another host's export is not ours.
    const docker = new Docker({ socketPath: '/var/run/docker.sock' })
    const exportOf = (hostId: string) =>
      docker.createContainer({
        Image: 'initless/debian:bookworm',
        Cmd: ['/nonexistent'],
        Labels: { [EXPORT_LABEL]: hostId },
      })
    const ours = await exportOf(env.INITLESS_HOST_ID!)
    const theirs = await exportOf(`other-${env.INITLESS_HOST_ID!}`)
    after(async () => {
      for (const c of [ours, theirs]) await c.remove({ force: true }).catch(() => undefined)
    })

    const second = startExecutor()
    await waitLog(/"msg":"reconciled"/, 60_000)
    const exists = (c: Docker.Container) =>
      c.inspect().then(
        () => true,
        () => false,
      )
    assert.equal(await exists(ours), false, "this host's interrupted export is removed")
    assert.equal(await exists(theirs), true, "another host's export is left alone")
    const report = JSON.parse(
      logs[logs.length - 1]!.split('\n').find((l) => l.includes('"msg":"reconciled"'))!,
    ) as Record<string, number>
    assert.equal(report.containers, 2)
    assert.equal(report.namespaces, 2)
    assert.equal(report.registryEntries, 2)
    assert.equal(report.dockerContainers, 1)
    assert.deepEqual(resources(), NO_LEAKS)
    assert.deepEqual(await registry!.list('py-ok'), [])
    // An export under way when the executor is stopped (a bake it was preparing) goes with it.
    const exporting = await exportOf(env.INITLESS_HOST_ID!)
    after(() => exporting.remove({ force: true }).catch(() => undefined))
    await stop(second, 'SIGTERM')
    assert.equal(
      await exists(exporting),
      false,
      // Its shutdown steps, to tell a step that failed from one that never ran.
      `the export container is removed at shutdown; the executor's log ends:\n${logs[logs.length - 1]!.split(
        '\n',
      )
        .slice(-25)
        .join('\n')}`,
    )
    assert.equal(await exists(theirs), true)
    assert.deepEqual(resources(), NO_LEAKS)
  })

  test('a second executor on the same state dir refuses to start and leaves the first one alone', async (t) => {
    if (!requireServices(t) || !queue) return
    const first = startExecutor()
    await waitLog(/"msg":"functions prepared"/, 120_000)
    const id = await enqueue('lazy')
    const result = await jobResult(id, 60_000)
    // In use, as a gateway would mark it: py-ok is reaped after 2 s idle, and the second
    // executor's start can take longer than that on a loaded machine.
    const inUse = setInterval(() => void registry!.touch('py-ok', id, Date.now()), 250)
    t.after(() => clearInterval(inUse))

    // Without the lock it would reconcile the dir: kill the instance's lazy-pages daemon, remove
    // its namespace, mount and cgroup.
    const second = startExecutor()
    // 'close', not 'exit': the log is read below, and 'exit' may come before all of it was.
    const code = await new Promise<number | null>((resolve) => second.once('close', resolve))
    const log = logs[logs.length - 1]!
    assert.equal(code, 1)
    assert.match(
      log,
      new RegExp(
        `"code":"ERR_STATE_DIR_IN_USE".*is in use by another executor \\(pid ${first.pid}, host id ${env.INITLESS_HOST_ID}`,
      ),
    )
    assert.doesNotMatch(log, /"msg":"reconciled"/)

    const res = await httpOnce(result.address.host, result.address.port, '/')
    assert.match(res.body, /^hello \d+\n$/)
    assert.equal((await registry!.get('py-ok', id))?.state, 'ready')
    clearInterval(inUse)
    await stop(first, 'SIGTERM')
    assert.equal(first.exitCode, 0)
    assert.deepEqual(resources(), NO_LEAKS)
  })
})
