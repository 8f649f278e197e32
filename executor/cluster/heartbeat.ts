/**
 * This host's heartbeat: the record that claims its instance subnet and advertises where peers
 * reach it. The first beat claims the subnet before any address is handed out from it; every later
 * beat renews the claim and syncs the routes to the other hosts' subnets.
 */
import type { Logger } from 'pino'
import type { ExecutorHeartbeat } from '../../shared/contracts.ts'
import { errorMessage, InitlessError } from '../../shared/errors.ts'
import type { InstanceRegistry } from '../../shared/registry.ts'
import type { PeerRouter } from './peers.ts'

export interface HeartbeatDeps {
  readonly registry: Pick<InstanceRegistry, 'beat' | 'executors'>
  readonly peers: Pick<PeerRouter, 'sync'>
  /** This host's record as of now. */
  readonly record: () => ExecutorHeartbeat
  readonly now: () => number
  readonly logger: Logger
}

export interface Heartbeat {
  /** The first beat: rejects with ERR_SUBNET_IN_USE when a live host holds an overlapping subnet. */
  claim(): Promise<void>
  /** One periodic beat (never rejects; failures are logged). */
  beat(): Promise<void>
  /** Since when every beat has been recorded (undefined: the last one was not). */
  beatingSince(): number | undefined
}

export function subnetInUse(mine: string | undefined, holder: ExecutorHeartbeat, now: number): InitlessError {
  return new InitlessError(
    'ERR_SUBNET_IN_USE',
    `INITLESS_SUBNET ${mine} overlaps ${holder.subnet} of host ${holder.hostId} (pid ${holder.pid}, ` +
      `last heartbeat ${now - holder.at} ms ago): every host needs a subnet of its own`,
  )
}

export function createHeartbeat(deps: HeartbeatDeps): Heartbeat {
  const { registry, logger } = deps
  let syncing = false
  let since: number | undefined

  /** Routes to the peers, one sync at a time. */
  const syncPeers = async () => {
    if (syncing) return
    syncing = true
    await registry
      .executors()
      .then((all) => deps.peers.sync(all, deps.now()))
      .catch((err: unknown) => logger.warn({ err: errorMessage(err) }, 'routes to peers not synced'))
      .finally(() => (syncing = false))
  }

  return {
    async claim() {
      const record = deps.record()
      const holder = await registry.beat(record)
      if (holder) throw subnetInUse(record.subnet, holder, deps.now())
    },
    async beat() {
      try {
        const record = deps.record()
        const other = await registry.beat(record)
        since = other ? undefined : (since ?? deps.now())
        // Only after a silence longer than EXECUTOR_FRESH_MS (Redis out of reach) can another host
        // have claimed the subnet since this one started: both now hand out the same addresses.
        if (other)
          logger.error(
            { code: 'ERR_SUBNET_IN_USE', err: subnetInUse(record.subnet, other, deps.now()).message },
            'heartbeat refused',
          )
      } catch (err) {
        since = undefined
        logger.debug({ err: errorMessage(err) }, 'heartbeat failed')
      }
      await syncPeers()
    },
    beatingSince: () => since,
  }
}
