/**
 * The container deployment end to end: scripts/compose-smoke.sh builds the image (Dockerfile) and
 * the Redis image, checks the image holds only the compiled JavaScript (no tsx, no TypeScript
 * sources, no compiler), runs `initless doctor` inside a container with the executor's flags, brings up
 * compose.yaml with hello-node, sends a cold request and an asynchronous invocation (queued in the
 * queues' own Redis) through the gateway and tears everything down.
 * A first build takes minutes (CRIU, Debian's npm); later runs reuse Docker's build cache.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { test } from 'node:test'
import { requireServices } from './support/integration.ts'

const SCRIPT = join(import.meta.dirname, '..', 'scripts', 'compose-smoke.sh')
const TIMEOUT_MS = 840_000 // below run-tests.mjs's per-test 900 s

function runSmoke(): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [SCRIPT], { stdio: ['ignore', 'pipe', 'pipe'], env: process.env })
    let output = ''
    child.stdout.on('data', (d: Buffer) => (output += d.toString()))
    child.stderr.on('data', (d: Buffer) => (output += d.toString()))
    // SIGTERM lets the script's trap run docker-compose down.
    const timer = setTimeout(() => child.kill('SIGTERM'), TIMEOUT_MS)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, output })
    })
  })
}

test('compose: the image builds without tsx or sources, doctor passes in a container, hello-node answers through compose', async (t) => {
  if (!requireServices(t)) return
  const { code, output } = await runSmoke()
  const tail = output.split('\n').slice(-80).join('\n')
  assert.equal(code, 0, `scripts/compose-smoke.sh failed:\n${tail}`)
  assert.match(
    output,
    /no tsx, no TypeScript sources, no compiler/,
    'the image ships compiled JavaScript only',
  )
  assert.match(
    output,
    /gateway \/healthz: 200 from node dist\/gateway\/main\.js/,
    'the gateway in the image answers from the compiled JavaScript',
  )
  assert.match(output, /all checks passed/, 'initless doctor passed inside the container')
  assert.match(output, /"message":"hello from node"/, 'hello-node answered through the gateway')
  assert.match(output, /server-timing: cold\b/i, 'the first request was a cold start')
  assert.match(
    output,
    /succeeded; \{initless\} keys: \d+ in queue-redis, none in redis/,
    'an asynchronous invocation ran through the queues’ own Redis (appendfsync always)',
  )
  assert.match(output, /compose-smoke: ok/)
})
