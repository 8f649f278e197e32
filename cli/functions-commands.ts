/**
 * `initless build`, `initless bake` and `initless functions`: build function images, bake their
 * snapshots, and list what exists.
 */
import type { Command } from 'commander'
import { loadExecutorConfig } from '../executor/config.ts'
import type { Baker } from '../executor/snapshots/bake.ts'
import type { ImageBuilder } from '../executor/snapshots/build.ts'
import type { SnapshotStore } from '../executor/snapshots/snapshot-store.ts'
import {
  createBuilder,
  createHostAdapters,
  createHostBaker,
  createSandboxes,
  createStore,
} from '../executor/wiring.ts'
import { loadFunctionDefs, selectFunctions, type FunctionDef, type FunctionSet } from '../shared/functions.ts'
import { createLogger } from '../shared/logger.ts'
import { formatAge, formatBytes } from '../shared/units.ts'
import { formatDuration, type CliIo } from './progress.ts'

/** What the build, bake and functions commands use of the executor's units. */
export interface FunctionTools {
  readonly builder: ImageBuilder
  readonly baker: Baker
  readonly store: SnapshotStore
}

export interface HostContext {
  readonly host: FunctionTools
  readonly set: FunctionSet
}

export async function openHost(): Promise<HostContext> {
  const config = loadExecutorConfig(process.env)
  const logger = createLogger({ level: process.env.INITLESS_LOG_LEVEL ?? 'warn', name: 'initless-cli' })
  const adapters = createHostAdapters(config, logger)
  const store = createStore(config)
  const sandboxes = createSandboxes(config, adapters)
  const host = {
    builder: createBuilder(config, adapters, logger),
    baker: createHostBaker(config, adapters, sandboxes, store, logger),
    store,
  }
  const set = await loadFunctionDefs(config.INITLESS_FUNCTIONS_DIR)
  return { host, set }
}

/** Invalid manifests are reported, never fatal for the others. */
function reportProblems(set: FunctionSet, io: CliIo): void {
  for (const p of set.problems) io.progress(`warning: ${p.error.message}`)
}

/** What preparing one function did: its image, and its snapshot when it was asked to bake. */
export interface PreparedFunction {
  readonly fn: string
  readonly build: { tag: string; imageId: string; built: boolean; ms: number }
  readonly bake?:
    | { skipped: string }
    | {
        key: string
        baked: boolean
        sizeBytes: number
        bakeMs: number
        warmupRequests: number
        workingSetPages: number | null
      }
}

/**
 * Build (and bake) one function, reporting it as one line: `hello-node  build 9.4 s  bake 3.3 s
 * 15 MiB`. Docker's build output and the bake's steps are the spinner's text and `-v`'s detail.
 */
export async function prepareFunction(
  ctx: { readonly host: Pick<FunctionTools, 'builder' | 'baker'> },
  fn: FunctionDef,
  io: CliIo,
  opts: { bake: boolean; forceBuild?: boolean; forceBake?: boolean },
): Promise<PreparedFunction> {
  const step = (what: string) => (line: string) => {
    io.detail(`[${fn.name}] ${line}`)
    io.activity(`${fn.name}  ${what}  ${line}`)
  }
  const parts: string[] = []
  try {
    io.activity(`${fn.name}  build`)
    const built = await ctx.host.builder.build(fn, {
      force: opts.forceBuild ?? false,
      onProgress: step('build'),
    })
    const build = { tag: built.tag, imageId: built.image.id, built: built.built, ms: Math.round(built.ms) }
    parts.push(built.built ? `build ${formatDuration(built.ms)}` : 'image up to date')
    if (!opts.bake) return { fn: fn.name, build }
    if (fn.manifest.restore.policy === 'boot') {
      parts.push('no snapshot (restore policy boot)')
      return { fn: fn.name, build, bake: { skipped: 'policy boot' } }
    }
    io.activity(`${fn.name}  bake`)
    const r = await ctx.host.baker.bake(fn, built.image, {
      force: opts.forceBake ?? false,
      onProgress: step('bake'),
    })
    const m = r.snapshot.meta
    parts.push(r.baked ? `bake ${formatDuration(m.bakeMs)}` : 'snapshot up to date', formatBytes(m.sizeBytes))
    return {
      fn: fn.name,
      build,
      bake: {
        key: m.key,
        baked: r.baked,
        sizeBytes: m.sizeBytes,
        bakeMs: Math.round(m.bakeMs),
        warmupRequests: m.warmupRequests,
        workingSetPages: m.workingSetPages ?? null,
      },
    }
  } catch (err) {
    parts.push('FAILED')
    throw err
  } finally {
    io.activity(undefined)
    io.progress(`${fn.name.padEnd(18)} ${parts.join('  ')}`)
  }
}

/** prepareFunction for each function in turn. */
export async function prepareFunctions(
  ctx: { readonly host: Pick<FunctionTools, 'builder' | 'baker'> },
  fns: readonly FunctionDef[],
  io: CliIo,
  opts: { bake: boolean; forceBuild?: boolean; forceBake?: boolean },
): Promise<PreparedFunction[]> {
  const results: PreparedFunction[] = []
  for (const fn of fns) results.push(await prepareFunction(ctx, fn, io, opts))
  return results
}

export function registerFunctionCommands(program: Command, io: CliIo): void {
  program
    .command('build [functions...]')
    .description('build function images (content-tagged: unchanged functions are not rebuilt)')
    .option('--force', 'rebuild even when an image with the same content exists')
    .action(async (names: string[], opts: { force?: boolean }) => {
      const ctx = await openHost()
      reportProblems(ctx.set, io)
      const fns = selectFunctions(ctx.set, names)
      const results = (await prepareFunctions(ctx, fns, io, { bake: false, forceBuild: opts.force })).map(
        (r) => ({ fn: r.fn, ...r.build }),
      )
      io.print(
        results,
        results.map((r) => `${r.fn.padEnd(20)} ${r.tag} ${r.built ? 'built' : 'up to date'}`).join('\n'),
      )
    })

  program
    .command('bake [functions...]')
    .description('boot, warm up and checkpoint functions into snapshots (builds images first)')
    .option('--force', 'bake again even when a valid snapshot exists')
    .action(async (names: string[], opts: { force?: boolean }) => {
      const ctx = await openHost()
      reportProblems(ctx.set, io)
      const fns = selectFunctions(ctx.set, names)
      const results = (await prepareFunctions(ctx, fns, io, { bake: true, forceBake: opts.force })).map(
        // `bake: true` bakes every function or says why not: `?? ` only satisfies the type.
        (r) => ({ fn: r.fn, ...(r.bake ?? { skipped: 'not baked' }) }),
      )
      io.print(
        results,
        results
          .map(
            (r) =>
              `${r.fn.padEnd(20)} ${'skipped' in r ? r.skipped : `${r.baked ? 'baked' : 'up to date'} ${formatBytes(r.sizeBytes ?? 0)}`}`,
          )
          .join('\n'),
      )
    })

  program
    .command('functions')
    .description('list functions: image, snapshot size and age, state')
    .action(async () => {
      const ctx = await openHost()
      const rows = []
      for (const fn of ctx.set.functions) {
        const { tag, image } = await ctx.host.builder.current(fn)
        const current = image
          ? await ctx.host.store.find(await ctx.host.baker.identity(fn, image))
          : undefined
        const latest = current ?? (await ctx.host.store.latest(fn.name))
        const state =
          fn.manifest.restore.policy === 'boot'
            ? image
              ? 'ready (boot)'
              : 'not built'
            : !image
              ? 'not built'
              : current
                ? 'ready'
                : latest
                  ? 'stale snapshot'
                  : 'not baked'
        rows.push({
          name: fn.name,
          image: image ? tag : null,
          policy: fn.manifest.restore.policy,
          snapshotBytes: latest?.meta.sizeBytes ?? null,
          snapshotAgeMs: latest ? Date.now() - latest.meta.createdAt : null,
          state,
        })
      }
      for (const p of ctx.set.problems)
        rows.push({
          name: p.name,
          image: null,
          policy: null,
          snapshotBytes: null,
          snapshotAgeMs: null,
          state: 'invalid manifest',
          error: p.error.message,
        })
      const text = [
        `${'NAME'.padEnd(18)} ${'STATE'.padEnd(16)} ${'POLICY'.padEnd(7)} ${'SNAPSHOT'.padEnd(10)} ${'AGE'.padEnd(6)} IMAGE`,
        ...rows.map(
          (r) =>
            `${r.name.padEnd(18)} ${r.state.padEnd(16)} ${(r.policy ?? '-').padEnd(7)} ${(r.snapshotBytes === null ? '-' : formatBytes(r.snapshotBytes)).padEnd(10)} ${(r.snapshotAgeMs === null ? '-' : formatAge(r.snapshotAgeMs)).padEnd(6)} ${r.image ?? '-'}`,
        ),
      ].join('\n')
      io.print(rows, text)
    })
}
