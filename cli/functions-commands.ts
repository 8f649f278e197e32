/**
 * `initless build`, `initless bake` and `initless functions`: build function images, bake their
 * snapshots, and list what exists.
 */
import type { Command } from 'commander'
import { loadExecutorConfig } from '../executor/config.ts'
import { createHost, type Host } from '../executor/host.ts'
import { loadFunctionDefs, selectFunctions, type FunctionDef, type FunctionSet } from '../shared/functions.ts'
import { createLogger } from '../shared/logger.ts'
import { formatAge, formatBytes } from '../shared/units.ts'

export interface CliIo {
  print(data: unknown, text: string): void
  /** Progress lines for steps that take more than a second (stderr; silent with --quiet/--json). */
  progress(line: string): void
}

export interface HostContext {
  readonly host: Host
  readonly set: FunctionSet
}

export async function openHost(): Promise<HostContext> {
  const config = loadExecutorConfig(process.env)
  const logger = createLogger({ level: process.env.INITLESS_LOG_LEVEL ?? 'warn', name: 'initless-cli' })
  const host = createHost(config, logger)
  const set = await loadFunctionDefs(config.INITLESS_FUNCTIONS_DIR)
  return { host, set }
}

/** Invalid manifests are reported, never fatal for the others. */
function reportProblems(set: FunctionSet, io: CliIo): void {
  for (const p of set.problems) io.progress(`warning: ${p.error.message}`)
}

export async function buildFunctions(ctx: HostContext, fns: FunctionDef[], io: CliIo, force = false) {
  const results = []
  for (const fn of fns) {
    io.progress(`[${fn.name}] building image`)
    const r = await ctx.host.builder.build(fn, {
      force,
      onProgress: (line) => io.progress(`[${fn.name}] ${line}`),
    })
    io.progress(
      `[${fn.name}] ${r.built ? `built ${r.tag} in ${(r.ms / 1000).toFixed(1)} s` : `up to date (${r.tag})`}`,
    )
    results.push({ fn: fn.name, tag: r.tag, imageId: r.image.id, built: r.built, ms: Math.round(r.ms) })
  }
  return results
}

export async function bakeFunctions(ctx: HostContext, fns: FunctionDef[], io: CliIo, force = false) {
  const results = []
  for (const fn of fns) {
    if (fn.manifest.restore.policy === 'boot') {
      io.progress(`[${fn.name}] restore policy is boot: no snapshot`)
      results.push({ fn: fn.name, skipped: 'policy boot' })
      continue
    }
    const built = await ctx.host.builder.build(fn, {
      onProgress: (line) => io.progress(`[${fn.name}] ${line}`),
    })
    const r = await ctx.host.baker.bake(fn, built.image, {
      force,
      onProgress: (msg) => io.progress(`[${fn.name}] ${msg}`),
    })
    const m = r.snapshot.meta
    io.progress(
      `[${fn.name}] ${r.baked ? `baked in ${(m.bakeMs / 1000).toFixed(1)} s` : 'snapshot up to date'}: ${formatBytes(m.sizeBytes)}`,
    )
    results.push({
      fn: fn.name,
      key: m.key,
      baked: r.baked,
      sizeBytes: m.sizeBytes,
      bakeMs: Math.round(m.bakeMs),
      warmupRequests: m.warmupRequests,
      workingSetPages: m.workingSetPages ?? null,
    })
  }
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
      const results = await buildFunctions(ctx, selectFunctions(ctx.set, names), io, opts.force)
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
      const results = await bakeFunctions(ctx, selectFunctions(ctx.set, names), io, opts.force)
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
