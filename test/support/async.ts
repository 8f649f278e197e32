/**
 * Helpers for the asynchronous invocation tests: a functions folder with copies of the async
 * fixture, accepting invocations, polling their state, and a callback receiver on 127.0.0.1.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http'
import { cp, mkdtemp, readFile, writeFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { http, HttpResponse } from './e2e.ts'

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'functions')

/** A functions folder holding the async fixture under each name, its manifest edited by `edit`. */
export async function asyncFunctionsDir(
  copies: Record<string, (manifest: string) => string>,
): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'initless-async-'))
  for (const [name, edit] of Object.entries(copies)) {
    await cp(join(FIXTURES, 'async-rec'), join(dir, name), { recursive: true })
    const file = join(dir, name, 'function.yaml')
    await writeFile(file, edit(await readFile(file, 'utf8')))
  }
  return dir
}

/** As the gateway's GET /invocations/<id> answers. */
export interface View {
  readonly id: string
  readonly state: string
  readonly attempts: {
    readonly startedAt: number
    readonly sentAt?: number
    readonly endedAt?: number
    readonly status?: number
    readonly code?: string
    readonly next?: string
  }[]
  readonly result?: { status: number; body: string; headers: Record<string, string> }
  readonly callback?: { url: string; deliveredAt?: number; error?: string }
}

/** What sends requests to the gateway (an E2eStack). */
export interface Gateway {
  request(method: string, path: string, opts?: Parameters<typeof http>[3]): Promise<HttpResponse>
}

/** Poll an invocation until `isDone` holds. */
export async function waitInvocation(
  gateway: Gateway,
  id: string,
  isDone: (v: View) => boolean,
  timeoutMs = 60_000,
): Promise<View> {
  const deadline = Date.now() + timeoutMs
  let last: View | string = 'no answer'
  for (;;) {
    const res = await gateway.request('GET', `/invocations/${id}`).catch((err: unknown) => String(err))
    if (typeof res !== 'string' && res.status === 200) {
      last = JSON.parse(res.text) as View
      if (isDone(last)) return last
    } else last = typeof res === 'string' ? res : `${res.status} ${res.text}`
    if (Date.now() > deadline) throw new Error(`invocation ${id}: still ${JSON.stringify(last)}`)
    await new Promise((r) => setTimeout(r, 200))
  }
}

export const isFinished = (v: View): boolean => ['succeeded', 'failed', 'dead'].includes(v.state)

/** Run `fn` over `items` with at most `limit` at once. */
export async function eachLimited<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const out: R[] = new Array<R>(items.length)
  let next = 0
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i]!)
    }
  })
  await Promise.all(lanes)
  return out
}

export interface CallbackReceiver {
  readonly port: number
  readonly received: { readonly headers: IncomingMessage['headers']; readonly body: View }[]
  close(): Promise<void>
}

/**
 * An HTTP server on 127.0.0.1 (on `port`, or any free one) that records the callbacks it gets and
 * answers them with `status`.
 */
export async function startCallbackReceiver(port = 0, status = 204): Promise<CallbackReceiver> {
  const received: CallbackReceiver['received'][number][] = []
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      received.push({ headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString()) as View })
      res.writeHead(status).end()
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', resolve)
  })
  return {
    port: (server.address() as AddressInfo).port,
    received,
    close: () => new Promise((r) => server.close(() => r())),
  }
}
