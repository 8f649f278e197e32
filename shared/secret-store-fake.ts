/** An in-memory SecretStore for unit tests (values kept sealed, as Redis would hold them). */
import { createSecretSealer, type SealedValue, type SecretSealer } from './secret-crypto.ts'
import type { SecretInfo, SecretStore } from './secrets.ts'

export function createFakeSecretStore(
  opts: { sealer?: SecretSealer; now?: () => number } = {},
): SecretStore & { readonly raw: Map<string, SealedValue> } {
  const sealer = opts.sealer ?? createSecretSealer(undefined)
  const now = opts.now ?? Date.now
  const raw = new Map<string, SealedValue>()
  const times = new Map<string, number>()
  const id = (r: { scope: string; name: string }) => `${r.scope}/${r.name}`
  return {
    raw,
    async set(ref, value) {
      const created = !raw.has(id(ref))
      raw.set(id(ref), sealer.seal(ref, value))
      const updatedAt = now()
      times.set(id(ref), updatedAt)
      return { created, updatedAt }
    },
    async list(scope) {
      return [...raw.keys()]
        .map((key): SecretInfo => {
          const [s = '', name = ''] = key.split('/')
          return { scope: s, name, updatedAt: times.get(key) ?? 0 }
        })
        .filter((i) => scope === undefined || i.scope === scope)
        .sort((a, b) => id(a).localeCompare(id(b)))
    },
    async remove(ref) {
      times.delete(id(ref))
      return raw.delete(id(ref))
    },
    async read(refs) {
      const values = refs.flatMap((r) => {
        const s = raw.get(id(r))
        return s ? [{ ...r, value: sealer.open(r, s) }] : []
      })
      return { values, missing: refs.filter((r) => !raw.has(id(r))) }
    },
    async missing(refs) {
      return refs.filter((r) => !raw.has(id(r)))
    },
  }
}
