/**
 * The executor's side of the network policy (adapters/firewall.ts holds the rules): applied once
 * at start, before any instance exists, and removed at shutdown. An executor that cannot apply it
 * does not start: its instances would reach the host's services and each other.
 */
import type { Logger } from 'pino'
import { errorMessage, InitlessError } from '../../shared/errors.ts'
import type { CommandRunner } from '../adapters/exec.ts'
import { createFirewall, type Firewall } from '../adapters/firewall.ts'

export interface NetworkPolicy {
  /** Remove the rules (kept, and said, while other executors' instances use the bridge). */
  remove(): Promise<void>
}

export async function applyNetworkPolicy(deps: {
  run: CommandRunner
  bridge: string
  subnet: string
  logger: Logger
  firewall?: Firewall
}): Promise<NetworkPolicy> {
  const log = deps.logger.child({ module: 'network-policy' })
  const firewall = deps.firewall ?? createFirewall({ run: deps.run, settings: deps })
  const started = performance.now()
  try {
    await firewall.apply()
  } catch (err) {
    throw new InitlessError(
      'ERR_NETWORK_POLICY',
      `the network policy for bridge ${deps.bridge} could not be applied (iptables, br_netfilter: run scripts/provision.sh): ${errorMessage(err)}`,
      { cause: err },
    )
  }
  log.info({ bridge: deps.bridge, ms: Math.round(performance.now() - started) }, 'network policy applied')
  return {
    async remove() {
      try {
        const done = await firewall.remove()
        if (done.removed) log.info({ bridge: deps.bridge }, 'network policy removed')
        else log.info({ bridge: deps.bridge, reason: done.reason }, 'network policy kept')
      } catch (err) {
        log.warn({ bridge: deps.bridge, err: errorMessage(err) }, 'network policy not removed')
      }
    },
  }
}
