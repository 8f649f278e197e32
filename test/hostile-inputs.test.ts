/**
 * A corpus of hostile and malformed inputs: raw requests, headers, bodies, paths and admin API
 * bodies sent to a real gateway (startGateway on real Redis and BullMQ, a stand-in executor),
 * manifests, seccomp profiles and CLI arguments. Each gets its documented answer (docs/errors.md,
 * docs/security.md): a 4xx problem+json with its code and a clear detail, or the CLI's exit code 2
 * and a message; the gateway answers normally afterwards. Then 500 slowloris connections are held
 * open while normal requests go on being served.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { rawExchange, testManifest, type RawAnswer } from '../gateway/test-support.ts'
import { isInitlessError } from '../shared/errors.ts'
import { loadFunctionDefs } from '../shared/functions.ts'
import { parseManifest } from '../shared/manifest.ts'
import { createRedis } from '../shared/redis.ts'
import {
  cleanUp,
  isolation,
  REDIS_URL,
  redisSkipReason,
  startFakeExecutor,
  startGateway,
  type FakeExecutor,
  type RunningGateway,
} from './gateway-harness.ts'

const skip = await redisSkipReason()
const execFileAsync = promisify(execFile)
const TOKEN = 'hostile-test-admin-token-0123456789'
const MAX_BODY = 64 * 1024

/** A raw HTTP/1.1 request with Host and Connection: close, unless the headers say otherwise. */
function req(method: string, target: string, headers: Record<string, string> = {}, body = ''): string {
  const all: Record<string, string> = { Host: 'gw.test', Connection: 'close', ...headers }
  if (body && !('Content-Length' in all) && !('Transfer-Encoding' in all))
    all['Content-Length'] = String(Buffer.byteLength(body))
  return `${method} ${target} HTTP/1.1\r\n${Object.entries(all)
    .map(([k, v]) => `${k}: ${v}`)
    .join('\r\n')}\r\n\r\n${body}`
}
const admin = (method: string, path: string, body?: string, headers: Record<string, string> = {}) =>
  req(
    method,
    `/admin${path}`,
    { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json', ...headers },
    body,
  )

interface HttpCase {
  readonly name: string
  readonly send: string | readonly string[]
  readonly status: number
  readonly code: string
  readonly detail?: RegExp
  /** Send in parts this far apart and read only once all is sent (a client still sending). */
  readonly slowSend?: boolean
}

const H = 'x'.repeat(1024)
const HTTP_CASES: HttpCase[] = [
  // Request lines
  {
    name: 'garbage instead of a request',
    send: 'HELLO THERE\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
    detail: /malformed HTTP request/,
  },
  {
    name: 'an invalid method token',
    send: 'G@T / HTTP/1.1\r\nHost: x\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
    detail: /malformed HTTP request/,
  },
  {
    name: 'an unknown HTTP version',
    send: 'GET / HTTP/3.7\r\nHost: x\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  { name: 'no HTTP version', send: 'GET /\r\nHost: x\r\n\r\n', status: 400, code: 'ERR_GATEWAY_BAD_REQUEST' },
  {
    name: 'a bare LF request line',
    send: 'GET / HTTP/1.1\nHost: x\n\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'a space in the target',
    send: 'GET /fn/a b HTTP/1.1\r\nHost: x\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'a control character in the target',
    send: 'GET /fn/\x01 HTTP/1.1\r\nHost: x\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'raw UTF-8 bytes in the target',
    send: 'GET /fn/\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'a 20 KB target',
    send: req('GET', `/fn/hello/${'a'.repeat(20_000)}`),
    status: 431,
    code: 'ERR_GATEWAY_HEADERS_TOO_LARGE',
  },
  {
    name: 'CONNECT',
    send: 'CONNECT internal:22 HTTP/1.1\r\nHost: internal:22\r\n\r\n',
    status: 405,
    code: 'ERR_GATEWAY_METHOD_NOT_ALLOWED',
    detail: /not a proxy/,
  },
  // Headers
  {
    name: 'a 200 KB header',
    send: [
      'GET /fn/hello/ HTTP/1.1\r\nHost: x\r\nX-Big: ',
      ...Array.from({ length: 50 }, () => 'y'.repeat(4096)),
      '\r\n\r\n',
    ],
    slowSend: true,
    status: 431,
    code: 'ERR_GATEWAY_HEADERS_TOO_LARGE',
    detail: /exceed 8192 bytes/,
  },
  {
    name: '100 headers of 1 KB',
    send: req('GET', '/healthz', Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`X-H${i}`, H]))),
    status: 431,
    code: 'ERR_GATEWAY_HEADERS_TOO_LARGE',
  },
  {
    name: 'no Host in HTTP/1.1',
    send: 'GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
    detail: /needs a Host header/,
  },
  {
    name: 'no Host in HTTP/1.0',
    send: 'GET /healthz HTTP/1.0\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
    detail: /needs a Host header/,
  },
  {
    name: 'two Host headers',
    send: 'GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
    detail: /2 Host headers/,
  },
  {
    name: 'a space before the colon',
    send: 'GET / HTTP/1.1\r\nHost : x\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'a header name with a space',
    send: 'GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'a NUL in a header value',
    send: 'GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'an obsolete folded header',
    send: 'GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'a header line without a colon',
    send: 'GET / HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'an Expect other than 100-continue',
    send: req('POST', '/fn/hello/', { Expect: 'teapot' }, 'x'),
    status: 417,
    code: 'ERR_GATEWAY_EXPECTATION_FAILED',
  },
  // Bodies and framing (request smuggling attempts included)
  {
    name: 'Content-Length and Transfer-Encoding together',
    send: req('POST', '/fn/hello/', { 'Content-Length': '4', 'Transfer-Encoding': 'chunked' }, '0\r\n\r\n'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'two different Content-Lengths',
    send: 'POST /fn/hello/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab',
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'a negative Content-Length',
    send: req('POST', '/fn/hello/', { 'Content-Length': '-1' }),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'a non-numeric Content-Length',
    send: req('POST', '/fn/hello/', { 'Content-Length': '12abc' }),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'Transfer-Encoding not ending in chunked',
    send: req('POST', '/fn/hello/', { 'Transfer-Encoding': 'chunked, gzip' }, 'x'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'an invalid chunk size',
    send: req('POST', '/fn/hello/', { 'Transfer-Encoding': 'chunked' }, 'zz\r\nhello\r\n0\r\n\r\n'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'a declared body over INITLESS_MAX_BODY, still being sent',
    send: [
      req('POST', '/fn/hello/', { 'Content-Length': String(4 * 1024 * 1024) }),
      ...Array.from({ length: 64 }, () => 'b'.repeat(64 * 1024)),
    ],
    slowSend: true,
    status: 413,
    code: 'ERR_GATEWAY_BODY_TOO_LARGE',
  },
  {
    name: 'a chunked body over INITLESS_MAX_BODY',
    send: [
      req('POST', '/fn/hello/', { 'Transfer-Encoding': 'chunked' }),
      ...Array.from({ length: 40 }, () => `4000\r\n${'c'.repeat(0x4000)}\r\n`),
      '0\r\n\r\n',
    ],
    slowSend: true,
    status: 413,
    code: 'ERR_GATEWAY_BODY_TOO_LARGE',
  },
  {
    name: 'a body that stops arriving',
    send: req('POST', '/fn/hello/', { 'Content-Length': '100' }, 'only ten b'),
    status: 408,
    code: 'ERR_GATEWAY_REQUEST_TIMEOUT',
  },
  {
    name: 'headers that never end',
    send: 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ',
    status: 408,
    code: 'ERR_GATEWAY_REQUEST_TIMEOUT',
  },
  // Paths
  { name: 'an unknown function', send: req('GET', '/fn/nope/'), status: 404, code: 'ERR_FUNCTION_NOT_FOUND' },
  {
    name: 'an invalid function name',
    send: req('GET', '/fn/UPPER_case/'),
    status: 404,
    code: 'ERR_FUNCTION_NAME_INVALID',
  },
  { name: 'no function name', send: req('GET', '/fn/'), status: 404, code: 'ERR_GATEWAY_NOT_FOUND' },
  {
    name: 'dot segments towards the admin API',
    send: req('GET', '/fn/hello/../../admin/functions'),
    status: 401,
    code: 'ERR_GATEWAY_UNAUTHORIZED',
  },
  {
    name: 'encoded dot segments',
    send: req('GET', '/fn/%2e%2e/admin/functions'),
    status: 401,
    code: 'ERR_GATEWAY_UNAUTHORIZED',
  },
  { name: 'an unknown route', send: req('GET', '/etc/passwd'), status: 404, code: 'ERR_GATEWAY_NOT_FOUND' },
  { name: 'an encoded NUL', send: req('GET', '/%00'), status: 404, code: 'ERR_GATEWAY_NOT_FOUND' },
  {
    name: 'the asterisk form',
    send: req('OPTIONS', '*'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
    detail: /not a path/,
  },
  {
    name: 'an absolute-form target',
    send: req('GET', 'http://other.invalid/fn/hello/'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
    detail: /not a path/,
  },
  // Admin API
  {
    name: 'admin without a token',
    send: req('GET', '/admin/functions'),
    status: 401,
    code: 'ERR_GATEWAY_UNAUTHORIZED',
  },
  {
    name: 'admin with a wrong token',
    send: req('GET', '/admin/functions', { Authorization: 'Bearer wrong-token-wrong-token' }),
    status: 401,
    code: 'ERR_GATEWAY_UNAUTHORIZED',
  },
  {
    name: 'admin with Basic credentials',
    send: req('GET', '/admin/functions', {
      Authorization: `Basic ${Buffer.from(`a:${TOKEN}`).toString('base64')}`,
    }),
    status: 401,
    code: 'ERR_GATEWAY_UNAUTHORIZED',
  },
  {
    name: 'admin: scale body not JSON',
    send: admin('POST', '/functions/hello/scale', '{instances: 2'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
    detail: /expected a JSON body/,
  },
  {
    name: 'admin: a negative count',
    send: admin('POST', '/functions/hello/scale', '{"instances": -1}'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'admin: a huge count',
    send: admin('POST', '/functions/hello/scale', '{"instances": 1e12}'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'admin: a count as a string',
    send: admin('POST', '/functions/hello/scale', '{"instances": "3"}'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'admin: an unknown field',
    send: admin('POST', '/functions/hello/scale', '{"instances": 1, "force": true}'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'admin: a JSON array',
    send: admin('POST', '/functions/hello/scale', '[1,2,3]'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'admin: deeply nested JSON',
    send: admin('PUT', '/functions/hello/runtime', `${'['.repeat(50_000)}${']'.repeat(50_000)}`),
    status: 413,
    code: 'ERR_GATEWAY_BODY_TOO_LARGE',
  },
  {
    name: 'admin: nested JSON within the limit',
    send: admin('PUT', '/functions/hello/runtime', `${'['.repeat(20_000)}${']'.repeat(20_000)}`),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'admin: an unknown runtime',
    send: admin('PUT', '/functions/hello/runtime', '{"runtime": "vm"}'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'admin: __proto__ pollution',
    send: admin('PUT', '/functions/hello/runtime', '{"__proto__": {"runtime": "boot"}}'),
    status: 400,
    code: 'ERR_GATEWAY_BAD_REQUEST',
  },
  {
    name: 'admin: a 100 KB body',
    send: admin('POST', '/functions/hello/scale', `{"instances": 1, "pad": "${'p'.repeat(100_000)}"}`),
    status: 413,
    code: 'ERR_GATEWAY_BODY_TOO_LARGE',
    detail: /65536 bytes/,
  },
  {
    name: 'admin: an unknown function',
    send: admin('POST', '/functions/nope/rebake'),
    status: 404,
    code: 'ERR_FUNCTION_NOT_FOUND',
  },
  {
    name: 'admin: an unknown route',
    send: admin('DELETE', '/everything'),
    status: 404,
    code: 'ERR_GATEWAY_NOT_FOUND',
  },
]

/** Manifests (and profile files beside them) each refused with ERR_MANIFEST_INVALID naming the field. */
const MANIFEST_CASES: { name: string; yaml: string; field: RegExp; files?: Record<string, string> }[] = [
  { name: 'not YAML', yaml: 'port: [8080\n', field: /\(file\): not valid YAML/ },
  { name: 'a list at the top', yaml: '- port: 8080\n', field: /\(file\): expected a YAML mapping/ },
  {
    name: 'an alias bomb',
    yaml: `a: &a [x,x,x,x,x,x,x,x,x,x]\n${Array.from(
      { length: 12 },
      (_, i) =>
        `b${i}: &b${i} [${Array(10)
          .fill(i ? `*b${i - 1}` : '*a')
          .join(',')}]`,
    ).join('\n')}\nport: 8080\n`,
    field: /\(file\): not valid YAML|unknown field/,
  },
  { name: 'duplicate keys', yaml: 'port: 8080\nport: 9090\n', field: /\(file\): not valid YAML/ },
  { name: 'port 0', yaml: 'port: 0\n', field: /port: / },
  { name: 'a port with a shell command', yaml: "port: '8080; rm -rf /'\n", field: /port: expected number/ },
  {
    name: 'a name that is not a DNS label',
    yaml: 'name: Hello_World\nport: 8080\n',
    field: /name: expected a DNS label/,
  },
  {
    name: 'an environment name with a space',
    yaml: "port: 8080\nenv:\n  'A B': x\n",
    field: /env\.A B: expected an environment variable name/,
  },
  {
    name: 'an unknown field',
    yaml: 'port: 8080\nprivileged: true\n',
    field: /unknown field\(s\) 'privileged'/,
  },
  {
    name: 'memory below 4Mi',
    yaml: 'port: 8080\nresources:\n  memory: 1Ki\n',
    field: /resources\.memory: expected a size/,
  },
  {
    name: 'a seccomp path out of the folder',
    yaml: 'port: 8080\nsecurity:\n  seccomp: ../../etc/profile.json\n',
    field: /security\.seccomp: expected 'default'/,
  },
  {
    name: 'an absolute seccomp path',
    yaml: 'port: 8080\nsecurity:\n  seccomp: /etc/profile.json\n',
    field: /security\.seccomp: expected 'default'/,
  },
  {
    name: 'a missing seccomp file',
    yaml: 'port: 8080\nsecurity:\n  seccomp: gone.json\n',
    field: /security\.seccomp: profile file gone\.json not found/,
  },
  {
    name: 'a seccomp file that is not a profile',
    yaml: 'port: 8080\nsecurity:\n  seccomp: p.json\n',
    field: /security\.seccomp: profile file p\.json is not a seccomp profile/,
    files: {
      'p.json': '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "NOPE"}]}',
    },
  },
]

/** CLI invocations refused as bad usage: exit code 2 and a message naming the problem. */
const CLI_CASES: { name: string; args: string[]; env?: Record<string, string>; message: RegExp }[] = [
  { name: 'an unknown command', args: ['frobnicate'], message: /unknown command 'frobnicate'/ },
  { name: 'an unknown option', args: ['doctor', '--frob'], message: /unknown option '--frob'/ },
  { name: 'a missing argument', args: ['invoke'], message: /missing required argument 'fn'/ },
  {
    name: 'a count that is not a number',
    args: ['scale', 'hello', 'many'],
    message: /instances must be a whole number/,
  },
  {
    name: 'a negative count',
    args: ['scale', 'hello', '-5'],
    message: /unknown option '-5'|instances must be a whole number/,
  },
  {
    name: 'an invalid setting',
    args: ['doctor', '--quick'],
    env: { INITLESS_REAP_INTERVAL: 'soon' },
    message: /INITLESS_REAP_INTERVAL/,
  },
]

describe('hostile inputs', { skip }, () => {
  const iso = isolation()
  let executor: FakeExecutor | undefined
  let gw: RunningGateway | undefined
  let port = 0

  before(async () => {
    executor = startFakeExecutor(iso)
    gw = await startGateway(iso, [testManifest('hello')], {
      maxBodyBytes: MAX_BODY,
      env: {
        INITLESS_ADMIN_TOKEN: TOKEN,
        INITLESS_MAX_HEADER_SIZE: '8Ki',
        INITLESS_HEADERS_TIMEOUT: '3s',
        INITLESS_REQUEST_TIMEOUT: '4s',
      },
    })
    port = Number(new URL(gw.url).port)
  })
  after(async () => {
    await gw?.close()
    await executor?.close()
    const redis = createRedis(REDIS_URL, { name: 'test-cleanup' })
    await cleanUp(redis, iso)
    redis.disconnect()
  })

  const healthy = async () => {
    const a = await rawExchange(port, req('GET', '/healthz'))
    assert.equal(a.status, 200, `the gateway answers normally: ${a.status} ${a.body}`)
  }

  test(`the corpus has at least 50 inputs (${HTTP_CASES.length + MANIFEST_CASES.length + CLI_CASES.length})`, () => {
    assert.ok(HTTP_CASES.length + MANIFEST_CASES.length + CLI_CASES.length >= 50)
  })

  test('a valid function request is served (the corpus is not refusing everything)', async () => {
    const a = await rawExchange(port, req('GET', '/fn/hello/ok'))
    assert.equal(a.status, 200, a.body)
  })

  // Several at a time: the timeouts make some take seconds.
  test('every malformed or hostile request gets its problem+json answer, read whole', async () => {
    const results = await Promise.all(
      HTTP_CASES.map(async (c) => ({
        c,
        a: await rawExchange(port, c.send, {
          timeoutMs: 15_000,
          ...(c.slowSend ? { holdMs: 2, readAfterSend: true } : {}),
        }).catch((e: Error) => e),
      })),
    )
    const wrong: string[] = []
    for (const { c, a } of results) {
      if (a instanceof Error) {
        wrong.push(`${c.name}: ${a.message}`)
        continue
      }
      const why = checkProblem(a, c)
      if (why) wrong.push(`${c.name}: ${why}`)
    }
    assert.deepEqual(wrong, [])
    await healthy()
  })

  test('every bad manifest is refused naming the field; the good one beside it loads', async () => {
    const root = await mkdtemp(join(tmpdir(), 'initless-hostile-'))
    after(() => rm(root, { recursive: true, force: true }))
    await mkdir(join(root, 'good'))
    await writeFile(join(root, 'good', 'function.yaml'), 'port: 8080\n')
    for (const [i, c] of MANIFEST_CASES.entries()) {
      const dir = join(root, `bad-${i}`)
      await mkdir(dir)
      await writeFile(join(dir, 'function.yaml'), c.yaml)
      for (const [f, text] of Object.entries(c.files ?? {})) await writeFile(join(dir, f), text)
    }
    const set = await loadFunctionDefs(root)
    assert.deepEqual(
      set.functions.map((f) => f.name),
      ['good'],
    )
    for (const [i, c] of MANIFEST_CASES.entries()) {
      const p = set.problems.find((x) => x.name === `bad-${i}`)
      assert.ok(p, `${c.name}: not refused`)
      assert.ok(isInitlessError(p.error, 'ERR_MANIFEST_INVALID'), `${c.name}: ${p.error.code}`)
      assert.match(p.error.message, c.field, c.name)
    }
    // A manifest of 1 MB of padding is refused quickly, not parsed for long.
    const t0 = performance.now()
    assert.throws(
      () => parseManifest(`port: 8080\ndescription: "${'d'.repeat(1_000_000)}"\n`, 'f.yaml', 'big'),
      /description/,
    )
    assert.ok(performance.now() - t0 < 2000)
  })

  test('bad CLI usage exits 2 with a message', async () => {
    const cli = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js')
    for (const c of CLI_CASES) {
      const res = await execFileAsync(process.execPath, [cli, ...c.args], {
        env: { ...process.env, ...c.env, INITLESS_REDIS_URL: REDIS_URL },
        timeout: 30_000,
      }).then(
        () => ({ code: 0, stderr: '' }),
        (err: { code?: number; stderr?: string }) => ({ code: err.code, stderr: err.stderr ?? '' }),
      )
      assert.equal(res.code, 2, `${c.name}: exit ${res.code} ${res.stderr}`)
      assert.match(res.stderr, c.message, c.name)
    }
  })

  test('500 slowloris connections held open: normal requests are still served, then they are cut off', async () => {
    const sockets: Socket[] = []
    const answers: string[] = []
    // 125 from each of four addresses: under the per-address cap, as a spread-out attack would be.
    for (let i = 0; i < 500; i++) {
      const s = connect({ port, host: '127.0.0.1', localAddress: `127.0.0.${10 + (i % 4)}` })
      s.on('error', () => undefined)
      s.on('data', (d: Buffer) => answers.push(d.toString('latin1')))
      s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n')
      sockets.push(s)
    }
    const trickle = setInterval(() => {
      for (const s of sockets) if (!s.destroyed) s.write('X-a: b\r\n')
    }, 500)
    try {
      await new Promise((r) => setTimeout(r, 300))
      for (let i = 0; i < 10; i++) {
        const a = await rawExchange(port, req('GET', '/fn/hello/during'))
        assert.equal(a.status, 200, `request ${i} during the attack: ${a.status} ${a.body}`)
      }
      // Past the headers timeout every slowloris connection got its 408.
      await new Promise((r) => setTimeout(r, 4000))
      assert.ok(
        answers.filter((a) => a.startsWith('HTTP/1.1 408')).length >= 490,
        `408 answers: ${answers.filter((a) => a.startsWith('HTTP/1.1 408')).length}`,
      )
    } finally {
      clearInterval(trickle)
      for (const s of sockets) s.destroy()
    }
    await healthy()
  })
})

function checkProblem(a: RawAnswer, c: HttpCase): string | undefined {
  if (a.status !== c.status) return `status ${a.status}, expected ${c.status}: ${a.body.slice(0, 200)}`
  if (a.headers['content-type'] !== 'application/problem+json')
    return `content-type ${a.headers['content-type']}`
  let body: { code?: string; detail?: string; status?: number }
  try {
    body = JSON.parse(a.body) as typeof body
  } catch {
    return `body is not JSON: ${a.body.slice(0, 200)}`
  }
  if (body.code !== c.code) return `code ${body.code}, expected ${c.code} (${body.detail})`
  if (!body.detail) return 'no detail'
  if (c.detail && !c.detail.test(body.detail)) return `detail '${body.detail}' does not match ${c.detail}`
  if (a.reset) return 'the connection was reset'
  return undefined
}
