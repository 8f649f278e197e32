/**
 * Function versions: a version id is the content hash of the build context and of the manifest's
 * fields that go into the image or the snapshot. The live fields (scaling, timeouts, async,
 * network, auth, rateLimit, description) are left out: changing them keeps the version, and deploying the change applies it
 * to running gateways and executors without a build or a bake.
 */
import { createHash } from 'node:crypto'
import { deployFailed } from './deploy-queue.ts'
import { isInitlessError } from './errors.ts'
import { canonicalJson, MANIFEST_FILE, parseManifest, type Manifest } from './manifest.ts'
import { readTar, type TarEntry } from './tar.ts'

/** Manifest fields that change neither image nor snapshot: applied live. */
export const LIVE_FIELDS = [
  'description',
  'scaling',
  'timeouts',
  'async',
  'network',
  'auth',
  'rateLimit',
] as const

/** The manifest without its live fields: what a snapshot and an image depend on. */
export function bakedManifest(m: Manifest): Omit<Manifest, (typeof LIVE_FIELDS)[number]> {
  const {
    description: _d,
    scaling: _s,
    timeouts: _t,
    async: _a,
    network: _n,
    auth: _auth,
    rateLimit: _rl,
    ...rest
  } = m
  return rest
}

/** Version ids are this many hex digits of the hash. */
export const VERSION_ID_LENGTH = 12

/**
 * The version id of a build context and its validated manifest. The manifest file itself is left
 * out (its text may change in live fields or comments only); its parsed, snapshot-relevant fields
 * are in instead.
 */
export function versionId(entries: readonly TarEntry[], manifest: Manifest): string {
  const h = createHash('sha256')
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
  for (const e of sorted) {
    if (e.path === MANIFEST_FILE) continue
    h.update(`${e.type} ${e.path} ${e.mode} ${e.content.length} ${e.target ?? ''}\n`)
    h.update(e.content)
  }
  h.update(`\0${canonicalJson(bakedManifest(manifest))}`)
  return h.digest('hex').slice(0, VERSION_ID_LENGTH)
}

/** Whether two manifests of one version differ (then only in live fields). */
export function manifestsDiffer(a: Manifest, b: Manifest): boolean {
  return canonicalJson(a) !== canonicalJson(b)
}

/**
 * Read an uploaded build context: its validated manifest and version id. Throws
 * ERR_DEPLOY_CONTEXT_INVALID for a bad archive and ERR_DEPLOY_FAILED (step `manifest`) for a
 * missing or invalid manifest, naming every problem.
 */
export function readContext(
  fn: string,
  context: Buffer,
  maxBytes: number,
): { manifest: Manifest; version: string } {
  const entries = readTar(context, maxBytes)
  const file = entries.find((e) => e.path === MANIFEST_FILE && e.type === 'file')
  if (!file)
    throw deployFailed(fn, undefined, {
      step: 'manifest',
      code: 'ERR_MANIFEST_INVALID',
      message: `the build context has no ${MANIFEST_FILE} at its top`,
    })
  let manifest: Manifest
  try {
    manifest = parseManifest(file.content.toString('utf8'), `${fn}/${MANIFEST_FILE}`, fn)
  } catch (err) {
    if (!isInitlessError(err)) throw err
    throw deployFailed(fn, undefined, { step: 'manifest', code: err.code, message: err.message })
  }
  return { manifest, version: versionId(entries, manifest) }
}
