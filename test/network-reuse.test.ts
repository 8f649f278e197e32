/**
 * A network namespace made for an address another instance had moments before is reachable at
 * once. The host's ARP cache keeps a freed address's MAC for 15-45 s; with a random MAC per
 * instance, a reused address got no answer for 10-20 s (the pool made it common: its sandboxes take
 * the address of an instance just stopped).
 */
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { connect } from 'node:net'
import { test } from 'node:test'
import { loadExecutorConfig } from '../executor/config.ts'
import { createHostAdapters } from '../executor/wiring.ts'
import { gatewayIp, macFor, vethName } from '../executor/adapters/network.ts'
import { createSilentLogger } from '../shared/logger.ts'
import { requireServices } from './support/integration.ts'
import { tcpListenerIn } from './support/netns.ts'

const config = loadExecutorConfig(process.env)
const PORT = 9099

/** Connect and read the answer, giving up after `ms`. */
function answer(ip: string, ms: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(PORT, ip)
    let data = ''
    const timer = setTimeout(() => {
      sock.destroy()
      reject(new Error(`${ip}:${PORT} did not answer within ${ms} ms`))
    }, ms)
    sock.on('data', (d) => (data += d.toString()))
    sock.on('end', () => {
      clearTimeout(timer)
      resolve(data)
    })
    sock.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
  })
}

/** The host's ARP entry for `ip` on the bridge (`ip neigh show`). */
function neighbour(ip: string): Promise<string> {
  return new Promise((resolve) => {
    const p = spawn('ip', ['neigh', 'show', ip, 'dev', config.INITLESS_BRIDGE])
    let out = ''
    p.stdout.on('data', (d: Buffer) => (out += d.toString()))
    p.on('close', () => resolve(out)) // not 'exit': it may come before the output has been read
  })
}

test('an address handed to a new namespace right after its previous one is gone answers at once', async (t) => {
  if (!requireServices(t)) return
  const host = createHostAdapters(config, createSilentLogger())
  await host.network.ensureBridge()
  // Another instance stays on the bridge throughout, as others do in production. Alone, the
  // namespace's going would take the bridge's carrier with it, and the kernel drops a device's
  // ARP cache when it loses its carrier: there would be no stale entry left for the next one.
  const keeperIp = host.ips.allocate()
  const keeper = 'initless-reuse-keep'
  const ip = host.ips.allocate()
  const names = ['initless-reuse-a', 'initless-reuse-b']
  try {
    await host.network.create(keeper, keeperIp)
    for (const [i, name] of names.entries()) {
      if (i > 0)
        assert.match(
          await neighbour(ip),
          new RegExp(`lladdr ${macFor(ip)}`),
          'the previous entry is still cached',
        )
      const ns = await host.network.create(name, ip)
      // The new namespace starts from no entry for its address (network.ts, neighbour entries).
      assert.doesNotMatch(await neighbour(ip), /lladdr|INCOMPLETE|FAILED/, `${name}: an entry is left`)
      await tcpListenerIn(ns.name, PORT, { once: true })
      // Well under the 5 s before the kernel would even re-check a stale ARP entry.
      assert.equal(await answer(ip, 2_000), 'ok', name)
      // The host reached it at the MAC derived from its address (checked while it exists: the
      // entry may go with the namespace).
      assert.match(await neighbour(ip), new RegExp(`lladdr ${macFor(ip)}`), name)
      await host.network.destroy(name)
    }
  } finally {
    for (const name of [...names, keeper]) await host.network.destroy(name).catch(() => undefined)
    host.ips.release(ip)
    host.ips.release(keeperIp)
  }
})

test('the bridge keeps its own MAC while ports with lower ones come and go', async (t) => {
  // Linux gives a bridge without a set address the lowest of its ports' and changes it with them:
  // an instance that learned the old one (its ARP entry for the gateway) then answered nowhere
  // for up to 45 s (1-2 s stalls of first requests to pooled instances, and 30 s silences).
  if (!requireServices(t)) return
  const host = createHostAdapters(config, createSilentLogger())
  await host.network.ensureBridge()
  const bridgeMac = () => readFileSync(`/sys/class/net/${config.INITLESS_BRIDGE}/address`, 'utf8').trim()
  const gw = gatewayIp(config.INITLESS_SUBNET)
  assert.equal(bridgeMac(), macFor(gw))
  const ip = host.ips.allocate()
  const name = 'initless-brmac'
  try {
    await host.network.create(name, ip)
    execFileSync('ip', ['link', 'set', vethName(name), 'address', '02:00:00:00:00:01'])
    assert.equal(bridgeMac(), macFor(gw), 'a port with a lower MAC joined')
    await host.network.destroy(name)
    assert.equal(bridgeMac(), macFor(gw), 'that port left')
  } finally {
    await host.network.destroy(name).catch(() => undefined)
    host.ips.release(ip)
  }
})
