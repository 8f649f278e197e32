import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { isInitlessError } from './errors.ts'
import { canonicalJson, manifestHash, parseManifest, type ManifestProblem } from './manifest.ts'

const FILE = '/srv/functions/hello/function.yaml'
const MiB = 1024 * 1024

/** Run `fn`, expect ERR_MANIFEST_INVALID naming FILE, and return the problems it lists. */
function problemsOf(fn: () => unknown): ManifestProblem[] {
  let problems: ManifestProblem[] | undefined
  assert.throws(fn, (err: unknown) => {
    assert.ok(isInitlessError(err, 'ERR_MANIFEST_INVALID'), `unexpected error: ${String(err)}`)
    assert.ok(err.message.startsWith(`${FILE}: invalid manifest\n`), err.message)
    assert.equal(err.details.file, FILE)
    problems = err.details.problems as ManifestProblem[]
    // Every problem is spelled out in the message too, one per line.
    for (const p of problems) assert.ok(err.message.includes(`\n  ${p.field}: ${p.message}`), err.message)
    return true
  })
  return problems!
}

describe('parseManifest: defaults', () => {
  test('a minimal manifest gets every documented default', () => {
    const m = parseManifest('port: 8080\n', FILE, 'hello')
    assert.deepEqual(
      { ...m },
      {
        name: 'hello',
        port: 8080,
        env: {},
        build: { dockerfile: 'Dockerfile', args: {} },
        readiness: { path: '/', expect: '', timeout: 60_000, interval: 50 },
        warmup: [],
        resources: { memory: 512 * MiB, cpus: 1, pids: 4096, disk: 256 * MiB },
        scaling: {
          concurrency: 50,
          maxInstances: 5,
          minInstances: 0,
          idleTimeout: 5 * 60_000,
          poolSize: 0,
          standby: 0,
          queueLimit: 1000,
        },
        restore: { policy: 'auto' },
        security: { seccomp: 'default' },
        async: {
          concurrency: 8,
          retries: 3,
          backoff: 1000,
          maxBody: MiB,
          maxResult: 256 * 1024,
          resultTTL: 24 * 3_600_000,
          queueLimit: 100_000,
        },
        network: { egress: 'allow' },
        auth: { type: 'none' },
        timeouts: { start: 30_000, request: 60_000 },
      },
    )
    assert.equal(m.rateLimit, undefined)
    assert.equal(m.command, undefined)
    assert.equal(m.workdir, undefined)
    assert.equal(m.description, undefined)
  })

  test('the result is deeply frozen', () => {
    const m = parseManifest('port: 8080\nwarmup:\n  - path: /\n', FILE, 'hello')
    assert.ok(Object.isFrozen(m))
    assert.ok(Object.isFrozen(m.resources))
    assert.ok(Object.isFrozen(m.warmup))
    assert.ok(Object.isFrozen(m.warmup[0]))
  })

  test('an explicit name equal to the folder is accepted; without a folder the name is required', () => {
    assert.equal(parseManifest('name: hello\nport: 80\n', FILE, 'hello').name, 'hello')
    assert.equal(parseManifest('name: solo\nport: 80\n', FILE).name, 'solo')
    assert.deepEqual(
      problemsOf(() => parseManifest('port: 80\n', FILE)),
      [{ field: 'name', message: 'is required (string)' }],
    )
  })

  test('durations and sizes are parsed into ms and bytes', () => {
    const m = parseManifest(
      [
        'port: 8080',
        'readiness:',
        '  timeout: 30s',
        '  interval: 500ms',
        'scaling:',
        '  idleTimeout: 5m',
        'timeouts:',
        '  start: 1500', // a bare number is milliseconds
        '  request: 2m',
        'resources:',
        '  memory: 256Mi',
      ].join('\n'),
      FILE,
      'hello',
    )
    assert.equal(m.readiness.timeout, 30_000)
    assert.equal(m.readiness.interval, 500)
    assert.equal(m.scaling.idleTimeout, 300_000)
    assert.equal(m.timeouts.start, 1500)
    assert.equal(m.timeouts.request, 120_000)
    assert.equal(m.resources.memory, 256 * MiB)
    assert.equal(
      parseManifest('port: 1\nresources:\n  memory: 2Gi\n', FILE, 'hello').resources.memory,
      2 * 1024 * MiB,
    )
  })

  test('a full manifest keeps its values; warm-up steps get their own defaults', () => {
    const m = parseManifest(
      [
        'name: hello',
        'description: says hello',
        'port: 9000',
        'command: [node, server.js]',
        'workdir: /app',
        'env:',
        '  A: x',
        '  N: 3',
        '  B: true',
        'build:',
        '  dockerfile: Dockerfile.fn',
        '  args: { V: "1" }',
        'warmup:',
        '  - path: /warm?x=1',
        '  - path: /echo',
        '    method: POST',
        '    count: 10',
        '    body: hi',
        '    headers: { content-type: text/plain }',
        '    expectStatus: 200',
        'restore:',
        '  policy: lazy',
        '  checkpointSignal: SIGUSR1',
      ].join('\n'),
      FILE,
      'hello',
    )
    assert.equal(m.description, 'says hello')
    assert.deepEqual(m.command, ['node', 'server.js'])
    assert.equal(m.workdir, '/app')
    // Scalars become strings: they end up in the process environment.
    assert.deepEqual({ ...m.env }, { A: 'x', N: '3', B: 'true' })
    assert.deepEqual({ ...m.build }, { dockerfile: 'Dockerfile.fn', args: { V: '1' } })
    assert.deepEqual(
      m.warmup.map((s) => ({ ...s })),
      [
        { path: '/warm?x=1', method: 'GET', count: 1, headers: {} },
        {
          path: '/echo',
          method: 'POST',
          count: 10,
          body: 'hi',
          headers: { 'content-type': 'text/plain' },
          expectStatus: 200,
        },
      ],
    )
    assert.equal(m.restore.policy, 'lazy')
    assert.equal(m.restore.checkpointSignal, 'SIGUSR1')
  })
})

describe('parseManifest: defects', () => {
  interface Defect {
    readonly name: string
    readonly yaml: string
    readonly field: string
    readonly message: RegExp
  }
  // Each manifest has exactly one defect; the folder is 'hello' so `name` defaults.
  const defects: Defect[] = [
    {
      name: 'network.egress not allow or deny',
      yaml: 'port: 8080\nnetwork:\n  egress: none\n',
      field: 'network.egress',
      message: /Expected 'allow' \| 'deny', received 'none'/,
    },
    {
      name: 'unknown network field',
      yaml: 'port: 8080\nnetwork:\n  ingress: deny\n',
      field: 'network',
      message: /unknown field\(s\) 'ingress'/,
    },
    {
      name: 'YAML syntax error',
      yaml: 'port: [1, 2\nreadiness: {}\n',
      field: '(file)',
      message: /^not valid YAML: .*line 2, column 1/,
    },
    {
      name: 'tab indentation',
      yaml: 'port: 8080\nscaling:\n\tconcurrency: 3\n',
      field: '(file)',
      message: /^not valid YAML: Tabs are not allowed/,
    },
    {
      name: 'duplicate key',
      yaml: 'port: 8080\nport: 9090\n',
      field: '(file)',
      message: /^not valid YAML: Map keys must be unique/,
    },
    {
      name: 'plain text, not a mapping',
      yaml: 'just some words\n',
      field: '(file)',
      message: /^expected a YAML mapping at the top level$/,
    },
    {
      name: 'top-level list',
      yaml: '- port: 8080\n',
      field: '(file)',
      message: /^expected a YAML mapping at the top level$/,
    },
    {
      name: 'missing port',
      yaml: 'description: no port\n',
      field: 'port',
      message: /^is required \(number\)$/,
    },
    { name: 'empty file', yaml: '', field: 'port', message: /^is required \(number\)$/ },
    {
      name: 'port out of range',
      yaml: 'port: 70000\n',
      field: 'port',
      message: /less than or equal to 65535/,
    },
    { name: 'port zero', yaml: 'port: 0\n', field: 'port', message: /greater than or equal to 1/ },
    {
      name: 'port not an integer',
      yaml: 'port: 80.5\n',
      field: 'port',
      message: /^expected integer, got float$/,
    },
    {
      name: 'port as string',
      yaml: 'port: "8080"\n',
      field: 'port',
      message: /^expected number, got string$/,
    },
    {
      name: 'name with uppercase',
      yaml: 'name: Hello\nport: 8080\n',
      field: 'name',
      message: /^expected a DNS label: lowercase letters, digits and -/,
    },
    {
      name: 'name with underscore',
      yaml: 'name: my_fn\nport: 8080\n',
      field: 'name',
      message: /^expected a DNS label/,
    },
    {
      name: 'name ending with -',
      yaml: 'name: hello-\nport: 8080\n',
      field: 'name',
      message: /^expected a DNS label/,
    },
    {
      name: 'name not matching the folder',
      yaml: 'name: other\nport: 8080\n',
      field: 'name',
      message: /^'other' must match its folder name 'hello'$/,
    },
    {
      name: 'unknown top-level field (typo)',
      yaml: 'port: 8080\nprot: 8080\n',
      field: '(manifest)',
      message: /^unknown field\(s\) 'prot'$/,
    },
    {
      name: 'unknown nested field',
      yaml: 'port: 8080\nscaling:\n  maxInstance: 3\n',
      field: 'scaling',
      message: /^unknown field\(s\) 'maxInstance'$/,
    },
    {
      name: 'unknown field in a warm-up step',
      yaml: 'port: 8080\nwarmup:\n  - path: /\n    times: 3\n',
      field: 'warmup.0',
      message: /^unknown field\(s\) 'times'$/,
    },
    {
      name: 'bad duration',
      yaml: 'port: 8080\nreadiness:\n  timeout: soon\n',
      field: 'readiness.timeout',
      message: /^expected a duration like 500ms, 30s or 5m$/,
    },
    {
      name: 'negative duration',
      yaml: 'port: 8080\ntimeouts:\n  request: -5s\n',
      field: 'timeouts.request',
      message: /^expected a duration like/,
    },
    {
      name: 'bad memory',
      yaml: 'port: 8080\nresources:\n  memory: lots\n',
      field: 'resources.memory',
      message: /^expected a size of at least 4Mi, like 256Mi or 2Gi$/,
    },
    {
      name: 'memory too small',
      yaml: 'port: 8080\nresources:\n  memory: 1Mi\n',
      field: 'resources.memory',
      message: /^expected a size of at least 4Mi/,
    },
    {
      name: 'cpus not positive',
      yaml: 'port: 8080\nresources:\n  cpus: 0\n',
      field: 'resources.cpus',
      message: /greater than 0/,
    },
    {
      name: 'restore policy not in enum',
      yaml: 'port: 8080\nrestore:\n  policy: fast\n',
      field: 'restore.policy',
      message: /Expected 'auto' \| 'lazy' \| 'eager' \| 'boot', received 'fast'/,
    },
    {
      name: 'checkpoint signal that would stop the function',
      yaml: 'port: 8080\nrestore:\n  checkpointSignal: SIGTERM\n',
      field: 'restore.checkpointSignal',
      message: /Expected 'SIGHUP' \| 'SIGUSR1' \| 'SIGUSR2' \| 'SIGWINCH' \| 'SIGURG', received 'SIGTERM'/,
    },
    {
      name: 'warm-up path without leading slash',
      yaml: 'port: 8080\nwarmup:\n  - path: hello\n',
      field: 'warmup.0.path',
      message: /^expected a path starting with \/ and without spaces$/,
    },
    {
      name: 'warm-up count 0',
      yaml: 'port: 8080\nwarmup:\n  - path: /\n    count: 0\n',
      field: 'warmup.0.count',
      message: /greater than or equal to 1/,
    },
    {
      name: 'warm-up method not allowed',
      yaml: 'port: 8080\nwarmup:\n  - path: /\n    method: TRACE\n',
      field: 'warmup.0.method',
      message: /Expected 'GET' \| 'HEAD'.*received 'TRACE'/,
    },
    {
      name: 'readiness path with a space',
      yaml: 'port: 8080\nreadiness:\n  path: /health check\n',
      field: 'readiness.path',
      message: /^expected a path starting with \//,
    },
    {
      name: 'env var name invalid',
      yaml: 'port: 8080\nenv:\n  1BAD: x\n',
      field: 'env.1BAD',
      message: /^expected an environment variable name$/,
    },
    {
      name: 'env value a mapping',
      yaml: 'port: 8080\nenv:\n  GOOD: { a: 1 }\n',
      field: 'env.GOOD',
      message: /^Invalid input$/,
    },
    {
      name: 'command as a string',
      yaml: 'port: 8080\ncommand: node server.js\n',
      field: 'command',
      message: /^expected array, got string$/,
    },
    {
      name: 'command empty',
      yaml: 'port: 8080\ncommand: []\n',
      field: 'command',
      message: /at least 1 element/,
    },
    {
      name: 'relative workdir',
      yaml: 'port: 8080\nworkdir: app\n',
      field: 'workdir',
      message: /^expected an absolute path$/,
    },
    {
      name: 'minInstances > maxInstances',
      yaml: 'port: 8080\nscaling:\n  minInstances: 6\n  maxInstances: 2\n',
      field: 'scaling.minInstances',
      message: /^must not exceed scaling\.maxInstances \(2\)$/,
    },
    {
      name: 'standby > maxInstances',
      yaml: 'port: 8080\nscaling:\n  standby: 3\n  maxInstances: 2\n',
      field: 'scaling.standby',
      message: /^must not exceed scaling\.maxInstances \(2\)$/,
    },
    {
      name: 'negative standby',
      yaml: 'port: 8080\nscaling:\n  standby: -1\n',
      field: 'scaling.standby',
      message: /greater than or equal to 0/,
    },
  ]

  for (const d of defects) {
    test(d.name, () => {
      const problems = problemsOf(() => parseManifest(d.yaml, FILE, 'hello'))
      assert.equal(problems.length, 1, JSON.stringify(problems))
      assert.equal(problems[0]!.field, d.field)
      assert.match(problems[0]!.message, d.message)
    })
  }

  test('several problems in one manifest are all listed at once', () => {
    const problems = problemsOf(() =>
      parseManifest(
        [
          'name: Bad_Name',
          'port: "80"',
          'prot: 1',
          'resources:',
          '  memory: lots',
          'scaling:',
          '  maxInstance: 3',
          'restore:',
          '  policy: fast',
          'warmup:',
          '  - path: nope',
        ].join('\n'),
        FILE,
      ),
    )
    assert.deepEqual(problems.map((p) => p.field).sort(), [
      '(manifest)',
      'name',
      'port',
      'resources.memory',
      'restore.policy',
      'scaling',
      'warmup.0.path',
    ])
  })
})

describe('manifestHash and canonicalJson', () => {
  const BASE = [
    'port: 8080',
    'env:',
    '  A: "1"',
    '  B: "2"',
    'resources:',
    '  memory: 256Mi',
    '  cpus: 1',
    'warmup:',
    '  - path: /',
    '    count: 3',
  ].join('\n')

  test('stable across key order, and equal for equivalent spellings', () => {
    const reordered = [
      'warmup:',
      '  - count: 3',
      '    path: /',
      'resources:',
      '  cpus: 1',
      '  memory: 268435456',
      'env:',
      '  B: "2"',
      '  A: "1"',
      'port: 8080',
    ].join('\n')
    const h = manifestHash(parseManifest(BASE, FILE, 'hello'))
    assert.match(h, /^[0-9a-f]{64}$/)
    assert.equal(manifestHash(parseManifest(reordered, FILE, 'hello')), h)
    assert.equal(manifestHash(parseManifest(BASE, FILE, 'hello')), h)
  })

  const changes: Array<[string, string]> = [
    ['port', BASE.replace('port: 8080', 'port: 8081')],
    ['env value', BASE.replace('A: "1"', 'A: "x"')],
    ['env key added', BASE.replace('  B: "2"', '  B: "2"\n  C: "3"')],
    ['memory', BASE.replace('256Mi', '257Mi')],
    ['cpus', BASE.replace('cpus: 1', 'cpus: 2')],
    ['warm-up count', BASE.replace('count: 3', 'count: 4')],
    ['description', `${BASE}\ndescription: new`],
    ['command', `${BASE}\ncommand: [node, a.js]`],
    ['restore policy', `${BASE}\nrestore:\n  policy: eager`],
    ['readiness expect', `${BASE}\nreadiness:\n  expect: ok`],
    ['timeouts', `${BASE}\ntimeouts:\n  request: 61s`],
    ['name (other folder)', BASE],
  ]
  for (const [what, yaml] of changes) {
    test(`changes when ${what} changes`, () => {
      const base = manifestHash(parseManifest(BASE, FILE, 'hello'))
      const dir = what.startsWith('name') ? 'hello2' : 'hello'
      assert.notEqual(manifestHash(parseManifest(yaml, FILE, dir)), base)
    })
  }

  test('ignores the network section: the policy is the host firewall, not the snapshot', () => {
    const base = manifestHash(parseManifest(BASE, FILE, 'hello'))
    const yaml = `${BASE}\nnetwork:\n  egress: deny`
    assert.equal(parseManifest(yaml, FILE, 'hello').network.egress, 'deny')
    assert.equal(manifestHash(parseManifest(yaml, FILE, 'hello')), base)
  })

  test('ignores the async section: it does not change what is baked', () => {
    const base = manifestHash(parseManifest(BASE, FILE, 'hello'))
    const yaml = `${BASE}\nasync:\n  retries: 7\n  concurrency: 2`
    assert.equal(manifestHash(parseManifest(yaml, FILE, 'hello')), base)
  })

  test('ignores auth and rateLimit: the gateway enforces them, nothing is baked', () => {
    const base = manifestHash(parseManifest(BASE, FILE, 'hello'))
    const yaml = `${BASE}\nauth:\n  type: key\nrateLimit:\n  perClient: 5`
    assert.equal(manifestHash(parseManifest(yaml, FILE, 'hello')), base)
  })

  test('canonicalJson sorts keys recursively, keeps array order and drops undefined', () => {
    assert.equal(
      canonicalJson({ b: 1, a: { d: [{ z: 1, y: 'x' }, 3], c: null }, u: undefined }),
      '{"a":{"c":null,"d":[{"y":"x","z":1},3]},"b":1}',
    )
    assert.equal(canonicalJson({ y: [2, 1], x: true }), canonicalJson({ x: true, y: [2, 1] }))
    assert.notEqual(canonicalJson([1, 2]), canonicalJson([2, 1]))
    assert.equal(canonicalJson('s"'), '"s\\""')
    assert.equal(canonicalJson(null), 'null')
  })
})

describe('parseManifest: auth and rateLimit', () => {
  test('auth.type key and a rate limit are kept; burst is optional', () => {
    const m = parseManifest(
      'port: 80\nauth: { type: key }\nrateLimit: { perFunction: 100, perClient: 0.5 }\n',
      FILE,
      'hello',
    )
    assert.equal(m.auth.type, 'key')
    assert.deepEqual({ ...m.rateLimit }, { perFunction: 100, perClient: 0.5 })
  })

  const cases: [string, string, string][] = [
    ['auth: { type: password }', 'auth.type', 'Invalid enum value'],
    ['auth: { type: key, header: x }', 'auth', "unknown field(s) 'header'"],
    ['rateLimit: {}', 'rateLimit', 'expected perFunction, perClient or both'],
    ['rateLimit: { burst: 5 }', 'rateLimit', 'expected perFunction, perClient or both'],
    ['rateLimit: { perClient: 0 }', 'rateLimit.perClient', 'greater than or equal'],
    ['rateLimit: { perClient: -1 }', 'rateLimit.perClient', 'greater than or equal'],
    ['rateLimit: { perFunction: 2000000 }', 'rateLimit.perFunction', 'less than or equal'],
    ['rateLimit: { perClient: 5, burst: 0 }', 'rateLimit.burst', 'greater than or equal'],
    ['rateLimit: { perClient: 5, burst: 1.5 }', 'rateLimit.burst', 'integer'],
    ["rateLimit: { perClient: '5' }", 'rateLimit.perClient', 'expected number'],
  ]
  for (const [yaml, field, message] of cases) {
    test(`${yaml} is refused at ${field}`, () => {
      const problems = problemsOf(() => parseManifest(`port: 80\n${yaml}\n`, FILE, 'hello'))
      const p = problems.find((x) => x.field === field)
      assert.ok(p, JSON.stringify(problems))
      assert.match(p.message, new RegExp(message.replace(/[()]/g, '\\$&')))
    })
  }
})
