/**
 * `initless deploy`, `versions`, `rollback` and `delete`: the function lifecycle against a running
 * stack, through the gateway's admin API (INITLESS_GATEWAY_URL or host/port, INITLESS_ADMIN_TOKEN).
 */
import type { Command } from 'commander'
import { InitlessError } from '../shared/errors.ts'
import { loadFunctionDefs, selectFunctions } from '../shared/functions.ts'
import type { InstanceRecord } from '../shared/contracts.ts'
import { formatAge, formatBytes } from '../shared/units.ts'
import {
  adminCall,
  deployFunction,
  describeDeploy,
  describeFailure,
  type AdminTarget,
  type DeployAnswer,
} from './deploy-client.ts'
import { startDevLoop } from './dev-loop.ts'
import { gatewayUrl } from './launcher.ts'
import type { CliIo } from './progress.ts'

/**
 * The running stack's admin API: INITLESS_GATEWAY_URL (or host/port) and INITLESS_ADMIN_TOKEN;
 * `what` names the commands in the error.
 */
export function target(what = 'the lifecycle commands'): AdminTarget {
  const token = process.env.INITLESS_ADMIN_TOKEN
  if (!token)
    throw new InitlessError(
      'ERR_CONFIG_INVALID',
      `INITLESS_ADMIN_TOKEN is not set: ${what} use the gateway admin API`,
    )
  return { url: gatewayUrl(process.env), token }
}

interface VersionsAnswer {
  readonly fn: string
  readonly active: string | null
  readonly versions: readonly {
    readonly version: string
    readonly state: string
    readonly isActive: boolean
    readonly createdAt: number
    readonly image: { readonly tag: string } | null
    readonly bakedOn: Readonly<Record<string, unknown>>
    readonly failure?: { readonly step: string; readonly message: string }
  }[]
}

interface DeploymentsAnswer {
  readonly deployments: readonly {
    readonly fn: string
    readonly active: string | null
    readonly activatedAt: number | null
    readonly versions: readonly {
      readonly version: string
      readonly state: string
      readonly isActive: boolean
      readonly hosts: readonly string[]
      readonly failedStep?: string
    }[]
  }[]
}

/** Whether the lifecycle commands can reach a stack (an admin token is configured). */
export function hasAdminTarget(): boolean {
  return Boolean(process.env.INITLESS_ADMIN_TOKEN)
}

/** `initless functions` against a running stack: the function registry's view. */
/** Per function, its frozen standby instances (restored ones) and the memory they hold. */
export function standbyOf(
  instances: readonly InstanceRecord[],
): Map<string, { count: number; bytes: number }> {
  const out = new Map<string, { count: number; bytes: number }>()
  for (const r of instances) {
    if (r.state !== 'frozen' || !r.address) continue
    const s = out.get(r.fn) ?? { count: 0, bytes: 0 }
    out.set(r.fn, { count: s.count + 1, bytes: s.bytes + (r.memoryBytes ?? 0) })
  }
  return out
}

export async function printDeployments(io: CliIo): Promise<void> {
  const [r, all] = await Promise.all([
    adminCall<DeploymentsAnswer>(target(), 'GET', '/deployments'),
    adminCall<{ instances: InstanceRecord[] }>(target(), 'GET', '/instances'),
  ])
  const standby = standbyOf(all.instances)
  const rows = r.deployments.map((d) => {
    const frozen = standby.get(d.fn)
    const active = d.versions.find((v) => v.isActive)
    const pending = d.versions.some((v) => v.state === 'pending')
    return {
      name: d.fn,
      active: d.active ?? '-',
      kept: d.versions.length,
      hosts: active?.hosts.join(',') || '-',
      state: pending ? 'deploying' : active ? 'serving' : 'no active version',
      age: d.activatedAt === null ? '-' : formatAge(Date.now() - d.activatedAt),
      standby: frozen ? `${frozen.count} ${formatBytes(frozen.bytes)}` : '-',
    }
  })
  const text = [
    `${'NAME'.padEnd(18)} ${'ACTIVE'.padEnd(13)} ${'KEPT'.padEnd(5)} ${'STATE'.padEnd(17)} ${'ACTIVATED'.padEnd(9)} ${'FROZEN'.padEnd(12)} BAKED ON`,
    ...rows.map(
      (x) =>
        `${x.name.padEnd(18)} ${x.active.padEnd(13)} ${String(x.kept).padEnd(5)} ${x.state.padEnd(17)} ${x.age.padEnd(9)} ${x.standby.padEnd(12)} ${x.hosts}`,
    ),
  ].join('\n')
  io.print(
    r.deployments.map((d) => {
      const frozen = standby.get(d.fn)
      return { ...d, frozen: frozen?.count ?? 0, frozenMemoryBytes: frozen?.bytes ?? 0 }
    }),
    text,
  )
}

export function registerLifecycleCommands(program: Command, io: CliIo): void {
  program
    .command('deploy [functions...]')
    .description('deploy function folders to the running stack: build, bake, then activate (no restart)')
    .action(async (names: string[]) => {
      const t = target()
      const set = await loadFunctionDefs(process.env.INITLESS_FUNCTIONS_DIR || 'functions')
      const fns = selectFunctions(set, names)
      if (!names.length) for (const p of set.problems) io.progress(`warning: ${p.error.message}`)
      const results: (DeployAnswer | { fn: string; error: string; step?: unknown; output?: unknown })[] = []
      let failed = 0
      for (const fn of fns) {
        io.activity(`${fn.name}  deploying`)
        try {
          const r = await deployFunction(t, fn)
          results.push(r)
          io.progress(describeDeploy(r))
        } catch (err) {
          failed++
          const problem = (err as { details?: { problem?: Record<string, unknown> } }).details?.problem
          results.push({
            fn: fn.name,
            error: String((err as Error).message),
            step: problem?.step,
            output: problem?.output,
          })
          io.progress(describeFailure(fn.name, err))
        } finally {
          io.activity(undefined)
        }
      }
      io.print(results, `${fns.length - failed} of ${fns.length} deployed`)
      if (failed) process.exitCode = 1
    })

  program
    .command('dev [functions...]')
    .description('deploy, then watch the function folders and redeploy a function when its folder changes')
    .action(async (names: string[]) => {
      const t = target()
      const dir = process.env.INITLESS_FUNCTIONS_DIR || 'functions'
      const deployOne = async (fn: string) => {
        const set = await loadFunctionDefs(dir)
        const [def] = selectFunctions(set, [fn])
        if (!def) throw new InitlessError('ERR_FUNCTION_NOT_FOUND', `no function folder ${fn}`)
        return describeDeploy(await deployFunction(t, def))
      }
      const initial = selectFunctions(await loadFunctionDefs(dir), names)
      for (const fn of initial)
        io.progress(await deployOne(fn.name).catch((err: unknown) => describeFailure(fn.name, err)))
      const loop = startDevLoop({
        dir,
        only: names,
        deploy: (fn) => deployOne(fn).catch((err: unknown) => describeFailure(fn, err)),
        print: (line) => io.progress(line),
      })
      io.progress(`watching ${dir} for changes (Ctrl-C stops)`)
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve)
        process.once('SIGTERM', resolve)
      })
      loop.close()
      await loop.settled()
    })

  program
    .command('versions <function>')
    .description('list the versions a function keeps, the active one marked')
    .action(async (fn: string) => {
      const r = await adminCall<VersionsAnswer>(target(), 'GET', `/functions/${fn}/versions`)
      const text = [
        `${'  VERSION'.padEnd(16)} ${'STATE'.padEnd(8)} ${'AGE'.padEnd(6)} ${'HOSTS'.padEnd(6)} IMAGE`,
        ...r.versions.map(
          (v) =>
            `${v.isActive ? '* ' : '  '}${v.version.padEnd(14)} ${v.state.padEnd(8)} ${formatAge(Date.now() - v.createdAt).padEnd(6)} ${String(Object.keys(v.bakedOn).length).padEnd(6)} ${v.image?.tag ?? '-'}${v.failure ? `  (${v.failure.step}: ${v.failure.message.split('\n')[0]})` : ''}`,
        ),
      ].join('\n')
      io.print(r, text)
    })

  program
    .command('rollback <function> [version]')
    .description(
      're-activate a kept version (default: the one before the active one); builds and bakes nothing',
    )
    .action(async (fn: string, version: string | undefined) => {
      const r = await adminCall<{ version: string; previous: string | null; ms: number }>(
        target(),
        'POST',
        `/functions/${fn}/rollback`,
        { json: version === undefined ? {} : { version } },
      )
      io.print(r, `${fn}: ${r.previous ?? 'none'} -> ${r.version} in ${r.ms} ms`)
    })

  program
    .command('delete <function>')
    .description(
      'delete a function: 404 from now on; in-flight requests finish; instances, snapshots and images go',
    )
    .action(async (fn: string) => {
      const r = await adminCall<{ fn: string }>(target(), 'DELETE', `/functions/${fn}`)
      io.print(r, `${fn} deleted`)
    })
}
