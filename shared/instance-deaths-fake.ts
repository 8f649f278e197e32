/** In-memory InstanceDeaths for unit tests (as registry-fake.ts is for the registry). */
import type { DeathCount, InstanceDeath, InstanceDeaths } from './instance-deaths.ts'

export function createFakeInstanceDeaths(): InstanceDeaths & { readonly recorded: InstanceDeath[] } {
  const recorded: InstanceDeath[] = []
  return {
    recorded,
    async record(death) {
      if (!recorded.some((d) => d.id === death.id)) recorded.push(death)
    },
    async get(id) {
      return recorded.find((d) => d.id === id)
    },
    async counts() {
      const by = new Map<string, DeathCount>()
      for (const d of recorded) {
        const key = `${d.fn}\t${d.reason}`
        by.set(key, { fn: d.fn, reason: d.reason, count: (by.get(key)?.count ?? 0) + 1 })
      }
      return [...by.values()]
    },
  }
}
