/**
 * End to end through the real processes: the executor (runc + CRIU restores of the sample
 * functions, snapshots in the default state dir) and the gateway, over HTTP on 127.0.0.1. One
 * executor + gateway pair serves the whole file; it starts with the first test.
 */
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { Readable } from 'node:stream'
import { after, afterEach, describe, test, type TestContext } from 'node:test'
import type { InstanceRecord } from '../shared/contracts.ts'
import {
  netnsNames,
  parseServerTiming,
  RUNC_ROOT,
  startE2eStack,
  STATE_DIR,
  type E2eStack,
  type HttpResponse,
  type LogRecord,
} from './support/e2e.ts'
import { rootMount } from '../executor/adapters/cgroups.ts'
import { requireServices } from './support/integration.ts'
import { hostResources } from './support/leaks.ts'

const MAX_BODY = 8 * 1024 * 1024
const PROBLEM = 'application/problem+json'
// The samples restore with runc + CRIU (their policies), so the CRIU share of the restore is there.
const COLD_PHASES = ['wait', 'queue', 'sandbox', 'restore', 'criu', 'ready', 'upstream'] as const

interface Sample {
  readonly fn: string
  readonly method: string
  readonly path: string
  readonly body?: string
  readonly check: (res: HttpResponse) => void
}

const SAMPLES: readonly Sample[] = [
  {
    fn: 'flask-table',
    method: 'GET',
    path: '/?key=888888',
    check: (res) => assert.equal(res.text, '{"value": 888888}\n'),
  },
  {
    fn: 'spring-greeting',
    method: 'GET',
    path: '/',
    check: (res) => assert.equal(res.text, 'Greetings from Spring Boot!'),
  },
  {
    fn: 'hello-node',
    method: 'GET',
    path: '/',
    check: (res) =>
      assert.deepEqual(JSON.parse(res.text), { message: 'hello from node', method: 'GET', path: '/' }),
  },
  {
    fn: 'ts-compile',
    method: 'POST',
    path: '/',
    body: 'let n: number = 1',
    // strict mode is on by default, so the transpiler adds the directive.
    check: (res) => assert.equal(res.text, '"use strict";\nlet n = 1;\n'),
  },
]

describe('e2e: real executor + real gateway, sample functions', () => {
  let starting: Promise<E2eStack> | undefined
  /** 200 answers seen per function, by the start kind their Server-Timing reported. */
  const answered = new Map<string, { cold: number; warm: number }>()
  /** Every instance id the tests saw, to check nothing of them is left on the host. */
  const seen = new Set<string>()

  /** The shared pair, started by the first test that needs it (after requireServices). */
  const stackFor = (t: TestContext): Promise<E2eStack> | undefined => {
    if (!requireServices(t)) return undefined
    starting ??= startE2eStack({ env: { INITLESS_MAX_BODY: '8Mi' } })
    return starting
  }

  /** A request to a function, with its start kind tallied for the metrics test. */
  async function invoke(
    stack: E2eStack,
    fn: string,
    method: string,
    path: string,
    opts: Parameters<E2eStack['request']>[2] = {},
  ): Promise<HttpResponse & { timing: Map<string, number | undefined> }> {
    const res = await stack.request(method, `/fn/${fn}${path}`, opts)
    const timing = parseServerTiming(res.headers['server-timing'])
    if (res.status === 200) {
      const kind = timing.has('cold') ? 'cold' : timing.has('warm') ? 'warm' : undefined
      assert.ok(
        kind,
        `${fn}: Server-Timing '${String(res.headers['server-timing'])}' says neither cold nor warm`,
      )
      const tally = answered.get(fn) ?? { cold: 0, warm: 0 }
      tally[kind]++
      answered.set(fn, tally)
    }
    return { ...res, timing }
  }

  const isReady = (fn: string) => (r: LogRecord) => r.msg === 'instance ready' && r.fn === fn
  const readyRecords = (stack: E2eStack, fn: string, from: number): LogRecord[] =>
    stack.executor.records(from).filter(isReady(fn))
  /**
   * The ready records since `from`, once there is at least one. The gateway learns of an instance
   * through Redis and may answer before the executor's log line has come through its pipe.
   */
  const awaitReadyRecords = async (stack: E2eStack, fn: string, from: number) => {
    await stack.executor.waitForLog(isReady(fn), 10_000, from)
    return readyRecords(stack, fn, from)
  }

  const rememberInstances = (list: readonly InstanceRecord[]) => {
    for (const i of list) seen.add(i.id)
  }

  afterEach(async (t) => {
    // TestContext.passed (Node >= 20.12) is not in @types/node 20 yet.
    const ctx = t as TestContext & { readonly passed?: boolean }
    if (ctx.passed !== false || !starting) return
    const stack = await starting.catch(() => undefined)
    if (stack) ctx.diagnostic(stack.logs(60))
  })

  after(async () => {
    if (!starting) return
    const stack = await starting.catch(() => undefined)
    if (!stack) return
    for (const i of await stack.instances().catch(() => [])) seen.add(i.id)
    const exits = await stack.stop()
    assert.deepEqual(exits.gateway, { code: 0, signal: null }, `gateway exit\n${stack.logs()}`)
    assert.deepEqual(exits.executor, { code: 0, signal: null }, `executor exit\n${stack.logs()}`)
    // Nothing of this run is left: no container (runc's, or a restored instance's cgroup), no
    // namespace, no process of ours.
    const ours = (s: string) => [...seen].some((id) => s.includes(id))
    assert.deepEqual(
      hostResources({ runcRoot: RUNC_ROOT, stateDir: STATE_DIR }).containers.filter(ours),
      [],
      'containers left behind',
    )
    assert.deepEqual(netnsNames().filter(ours), [], 'network namespaces left behind')
    assert.equal(stack.executor.isRunning(), false)
    assert.equal(stack.gateway.isRunning(), false)
  })

  for (const sample of SAMPLES) {
    test(`${sample.fn}: a cold request is answered through a restore, then warm ones`, async (t) => {
      const stack = await stackFor(t)
      if (!stack) return
      await stack.scaleToZero(sample.fn)
      const mark = stack.executor.mark()
      const send = () =>
        invoke(stack, sample.fn, sample.method, sample.path, {
          ...(sample.body === undefined
            ? {}
            : { body: sample.body, headers: { 'content-type': 'application/typescript' } }),
        })

      const cold = await send()
      assert.equal(cold.status, 200, cold.text)
      sample.check(cold)
      assert.ok(cold.headers['x-request-id'], 'x-request-id set')
      assert.deepEqual(
        [...cold.timing.keys()],
        ['cold', ...COLD_PHASES],
        String(cold.headers['server-timing']),
      )
      for (const phase of COLD_PHASES) {
        const dur = cold.timing.get(phase)
        assert.ok(dur !== undefined && Number.isFinite(dur) && dur >= 0, `${phase};dur=${dur}`)
      }
      t.diagnostic(`${sample.fn} cold Server-Timing: ${String(cold.headers['server-timing'])}`)

      // Exactly one restore, and the phases in the header are the executor's own numbers.
      const restores = await awaitReadyRecords(stack, sample.fn, mark)
      assert.equal(restores.length, 1, `restores of ${sample.fn}: ${JSON.stringify(restores)}`)
      const restored = restores[0]!
      const round = (v: unknown) => Math.round(Number(v) * 10) / 10
      assert.equal(cold.timing.get('queue'), round(restored.queueMs))
      assert.equal(cold.timing.get('sandbox'), round(restored.sandboxMs))
      assert.equal(cold.timing.get('restore'), round(restored.restoreMs))
      assert.equal(cold.timing.get('criu'), round(restored.criuMs))
      assert.ok(Number(restored.criuMs) > 0 && Number(restored.criuMs) < Number(restored.restoreMs))
      assert.equal(cold.timing.get('ready'), round(restored.readyMs))
      const list = await stack.instances(sample.fn)
      rememberInstances(list)
      assert.deepEqual(
        list.map((i) => [i.id, i.state, i.hostId]),
        [[restored.id, 'ready', stack.env.INITLESS_HOST_ID]],
      )

      for (let i = 0; i < 3; i++) {
        const warm = await send()
        assert.equal(warm.status, 200, warm.text)
        sample.check(warm)
        const names = [...warm.timing.keys()]
        assert.equal(names[0], 'warm', String(warm.headers['server-timing']))
        assert.equal(names.at(-1), 'upstream')
        for (const phase of ['queue', 'sandbox', 'restore', 'ready'])
          assert.equal(warm.timing.has(phase), false)
      }
      assert.equal(readyRecords(stack, sample.fn, mark).length, 1, 'warm requests restored nothing')
      assert.deepEqual(
        (await stack.instances(sample.fn)).map((i) => i.id),
        [restored.id],
      )
    })
  }

  test('spring-greeting: 100 concurrent requests from zero, restore and service times known: one restore', async (t) => {
    const stack = await stackFor(t)
    if (!stack) return
    const fn = 'spring-greeting'
    // One cold start first, so the gateway has seen a restore and an answer of spring-greeting.
    await stack.scaleToZero(fn)
    assert.equal((await invoke(stack, fn, 'GET', '/')).status, 200)
    await stack.scaleToZero(fn)
    const mark = stack.executor.mark()
    const gatewayMark = stack.gateway.mark()
    const started = performance.now()
    const results = await Promise.all(Array.from({ length: 100 }, () => invoke(stack, fn, 'GET', '/')))
    const elapsed = performance.now() - started
    assert.deepEqual(
      results.map((r) => r.status),
      Array.from({ length: 100 }, () => 200),
    )
    for (const r of results) assert.equal(r.text, 'Greetings from Spring Boot!')
    // Every request arrived long before a restore could finish (> 0.5 s), so every one waited.
    const cold = results.filter((r) => r.timing.has('cold')).length
    t.diagnostic(`100 requests in ${elapsed.toFixed(0)} ms, ${cold} cold`)
    assert.equal(cold, 100)

    // concurrency 50: by slots, 100 waiting requests need two instances. But one instance answers
    // 50 at a time in a few ms each, so it works through all 100 long before a second restore
    // would be ready (gateway/scaling.ts, instancesToStart): one restore, and no second after it.
    const enqueued = stack.gateway
      .records(gatewayMark)
      .filter((r) => r.msg === 'restore enqueued' && r.fn === fn)
      .map((r) => r.instanceId)
    assert.equal(enqueued.length, 1, `restores enqueued: ${JSON.stringify(enqueued)}`)
    const list = await stack.waitForInstances(
      fn,
      (l) => l.length === 1 && l.every((i) => i.state === 'ready'),
      60_000,
    )
    rememberInstances(list)
    const restores = await awaitReadyRecords(stack, fn, mark)
    assert.equal(restores.length, 1, `restores: ${JSON.stringify(restores)}`)
    assert.deepEqual(list.map((i) => i.id).sort(), restores.map((r) => r.id).sort())
    assert.deepEqual(list.map((i) => i.id).sort(), [...enqueued].sort())
    await new Promise((r) => setTimeout(r, 500))
    assert.equal(readyRecords(stack, fn, mark).length, 1, 'no second restore')
  })

  test('hello-node: a 5 MB chunked body streams through /echo byte for byte; too large is 413', async (t) => {
    const stack = await stackFor(t)
    if (!stack) return
    const fn = 'hello-node'
    const payload = randomBytes(5 * 1024 * 1024)
    const chunks = (buf: Buffer, size = 64 * 1024) =>
      Readable.from(
        (function* () {
          for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size)
        })(),
      )
    const echoed = await invoke(stack, fn, 'POST', '/echo', {
      headers: { 'content-type': 'application/octet-stream' },
      body: chunks(payload),
    })
    assert.equal(echoed.status, 200, echoed.text.slice(0, 200))
    assert.equal(echoed.headers['content-type'], 'application/octet-stream')
    assert.equal(echoed.headers['transfer-encoding'], 'chunked', 'the request went out chunked')
    assert.equal(echoed.body.length, payload.length)
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
    assert.equal(sha(echoed.body), sha(payload))

    // Declared over the limit: refused before anything is proxied.
    const big = randomBytes(MAX_BODY + 1024 * 1024)
    const refused = await invoke(stack, fn, 'POST', '/echo', {
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(big.length) },
      body: big,
    })
    assert.equal(refused.status, 413)
    assert.equal(refused.headers['content-type'], PROBLEM)
    const problem = JSON.parse(refused.text) as Record<string, unknown>
    assert.equal(problem.code, 'ERR_GATEWAY_BODY_TOO_LARGE')
    assert.equal(problem.status, 413)
    assert.equal(problem.requestId, refused.headers['x-request-id'])

    // Chunked over the limit: the echo has started answering, so the gateway cuts the exchange off
    // at the limit instead (no 413 possible once the 200 is out); the client never gets it whole.
    const mark = stack.gateway.mark()
    const cut = await invoke(stack, fn, 'POST', '/echo', {
      headers: { 'content-type': 'application/octet-stream' },
      body: chunks(big),
    }).then(
      (res) => res,
      (err: Error) => err,
    )
    if (cut instanceof Error) {
      // The gateway counts the exchange under the 200 status line it had already passed on.
      answered.get(fn)!.warm++
    } else {
      assert.notEqual(cut.status, 200, 'a chunked body over the limit was echoed whole')
      assert.equal(cut.status, 413)
    }
    const expected = cut instanceof Error ? 'upstream failed after response started' : 'request refused'
    await stack.gateway.waitForLog(
      (r) => r.code === 'ERR_GATEWAY_BODY_TOO_LARGE' && r.msg === expected,
      5_000,
      mark,
    )
  })

  test('unknown and invalid function names answer 404 problem+json', async (t) => {
    const stack = await stackFor(t)
    if (!stack) return
    const before = (await stack.instances()).map((i) => i.id).sort()
    const cases = [
      ['/fn/no-such-function/', 'ERR_FUNCTION_NOT_FOUND'],
      ['/fn/no-such-function/deep/path?x=1', 'ERR_FUNCTION_NOT_FOUND'],
      ['/fn/..%2Fetc/', 'ERR_FUNCTION_NAME_INVALID'],
      ['/fn/UPPER/', 'ERR_FUNCTION_NAME_INVALID'],
      // URL parsing resolves an encoded dot segment before routing: this is a request for `/`.
      ['/fn/%2e%2e/', 'ERR_GATEWAY_NOT_FOUND'],
    ] as const
    for (const [path, code] of cases) {
      const res = await stack.request('GET', path)
      assert.equal(res.status, 404, `${path}: ${res.text}`)
      assert.equal(res.headers['content-type'], PROBLEM, path)
      const problem = JSON.parse(res.text) as Record<string, unknown>
      assert.equal(problem.code, code, path)
      assert.equal(problem.status, 404, path)
      assert.equal(problem.requestId, res.headers['x-request-id'], path)
    }
    assert.deepEqual((await stack.instances()).map((i) => i.id).sort(), before, 'nothing was restored')
  })

  test('hello-node: a killed instance leaves the registry within 3 s; the next request restores', async (t) => {
    const stack = await stackFor(t)
    if (!stack) return
    const fn = 'hello-node'
    const [victim, ...others] = await stack.instances(fn)
    assert.ok(victim, 'hello-node has an instance from the earlier tests')
    assert.deepEqual(others, [])
    // The instance's process, as CRIU restored it (its pid file), running in the instance's rootfs.
    const pid = Number(await readFile(`${STATE_DIR}/instances/${victim.id}/pid`, 'utf8'))
    assert.ok(pid > 0)
    assert.ok(
      rootMount(pid).includes(`upperdir=${STATE_DIR}/instances/${victim.id}/layer/upper`),
      rootMount(pid),
    )
    const mark = stack.executor.mark()
    const killedAt = Date.now()
    process.kill(pid, 'SIGKILL')

    await stack.waitForInstances(fn, (list) => !list.some((i) => i.id === victim.id), 3_000)
    const goneMs = Date.now() - killedAt
    t.diagnostic(`instance gone from the registry ${goneMs} ms after SIGKILL`)
    await stack.executor.waitForLog((r) => r.msg === 'instance died' && r.id === victim.id, 1_000, mark)

    const res = await invoke(stack, fn, 'GET', '/')
    assert.equal(res.status, 200, res.text)
    assert.deepEqual(JSON.parse(res.text), { message: 'hello from node', method: 'GET', path: '/' })
    assert.equal([...res.timing.keys()][0], 'cold', String(res.headers['server-timing']))
    const restores = await awaitReadyRecords(stack, fn, mark)
    assert.equal(restores.length, 1, `restores: ${JSON.stringify(restores)}`)
    const list = await stack.instances(fn)
    rememberInstances(list)
    assert.deepEqual(
      list.map((i) => [i.id, i.state]),
      [[restores[0]!.id, 'ready']],
    )
    assert.notEqual(restores[0]!.id, victim.id)
  })

  test('/metrics counts cold and warm invocations and cold-start phases', async (t) => {
    const stack = await stackFor(t)
    if (!stack) return
    const res = await stack.request('GET', '/metrics')
    assert.equal(res.status, 200)
    assert.match(String(res.headers['content-type']), /^text\/plain/)
    const samples = new Map<string, number>()
    for (const line of res.text.split('\n')) {
      const m = /^(\w+)(\{[^}]*\})? (\S+)$/.exec(line)
      if (m) samples.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]))
    }
    const value = (name: string, labels: Record<string, string>) =>
      samples.get(
        `${name}{${Object.entries(labels)
          .map(([k, v]) => `${k}="${v}"`)
          .join(',')}}`,
      ) ?? 0

    const restoresOf = (fn: string) => stack.executor.records().filter(isReady(fn)).length
    for (const { fn } of SAMPLES) {
      const tally = answered.get(fn)
      assert.ok(tally && tally.cold >= 1 && tally.warm >= 1, `${fn}: ${JSON.stringify(tally)}`)
      const counted = {
        cold: value('initless_gateway_invocations_total', { function: fn, status: '200', start: 'cold' }),
        warm: value('initless_gateway_invocations_total', { function: fn, status: '200', start: 'warm' }),
      }
      assert.deepEqual(counted, tally, `${fn} invocations`)
      const restores = restoresOf(fn)
      assert.ok(restores >= 1)
      for (const phase of ['queue', 'sandbox', 'restore', 'ready']) {
        const labels = { function: fn, phase }
        assert.equal(
          value('initless_gateway_cold_start_phase_seconds_count', labels),
          restores,
          `${fn} ${phase}`,
        )
        assert.ok(value('initless_gateway_cold_start_phase_seconds_sum', labels) >= 0)
      }
      assert.ok(
        value('initless_gateway_cold_start_phase_seconds_sum', { function: fn, phase: 'restore' }) > 0,
      )
    }
    assert.equal(
      value('initless_gateway_invocations_total', { function: 'hello-node', status: '413', start: 'none' }),
      1,
      'the declared-too-large body',
    )
  })
})
