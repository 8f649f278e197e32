/**
 * One keep-alive agent per instance address, so requests reuse warm connections. Agents of
 * instances that went away are dropped once they hold no sockets.
 */
import { Agent } from 'node:http'
import type { InstanceAddress } from '../shared/contracts.ts'

export interface UpstreamAgents {
  get(address: InstanceAddress): Agent
  /** Close every socket and forget all agents. */
  close(): void
}

export function createUpstreamAgents(options: { maxSocketsPerInstance?: number } = {}): UpstreamAgents {
  const agents = new Map<string, Agent>()
  const sweep = setInterval(() => {
    for (const [key, agent] of agents) {
      const isIdle = !Object.keys(agent.sockets).length && !Object.keys(agent.freeSockets).length
      if (isIdle && !Object.keys(agent.requests).length) {
        agent.destroy()
        agents.delete(key)
      }
    }
  }, 60_000)
  sweep.unref()
  return {
    get(address) {
      const key = `${address.host}:${address.port}`
      let agent = agents.get(key)
      if (!agent) {
        // Idle sockets close after 4 s: below the 5 s keep-alive timeout of Node servers, so we
        // rarely write to a socket the instance is closing (Node also honours Keep-Alive hints).
        agent = new Agent({
          keepAlive: true,
          timeout: 4000,
          scheduling: 'lifo',
          maxSockets: options.maxSocketsPerInstance ?? Infinity,
        })
        agents.set(key, agent)
      }
      return agent
    },
    close() {
      clearInterval(sweep)
      for (const agent of agents.values()) agent.destroy()
      agents.clear()
    },
  }
}
