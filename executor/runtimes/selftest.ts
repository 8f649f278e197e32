/**
 * End-to-end restore self-test: a tiny static HTTP server is run with runc in its own network
 * namespace, checkpointed with CRIU, then restored eagerly and lazily, and must answer over HTTP
 * after each restore with its pre-checkpoint state intact. `initless doctor` and the platform tests
 * run it; it leaves nothing behind, whatever fails.
 */
import { createHash, randomBytes } from 'node:crypto'
import { chmod, copyFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { errorMessage, InitlessError } from '../../shared/errors.ts'
import type { Criu } from '../adapters/criu.ts'
import { NATIVE_DIR } from '../adapters/native.ts'
import { isProcessAlive, readPidFile } from '../adapters/process.ts'
import { httpOnce, waitReady } from '../adapters/probe.ts'
import type { Runc } from '../adapters/runc.ts'
import { restoreIntoSandbox } from './runtimes.ts'
import type { Sandbox, SandboxManager } from '../sandbox/sandbox.ts'
import { readSeccompMode } from '../sandbox/seccomp.ts'
import { DEFAULT_SECCOMP_PROFILE } from '../sandbox/seccomp-profile.ts'

export interface SelfTestStep {
  readonly name: string
  readonly ok: boolean
  readonly ms: number
  readonly detail: string
}

export interface SelfTestDeps {
  readonly runc: Runc
  readonly criu: Criu
  readonly sandboxes: SandboxManager
  /** Scratch space for the probe's rootfs and the checkpoint. */
  readonly workDir: string
  /** The static probe server (native.ts installedProbeServer); undefined: not installed. */
  readonly probeServer: string | undefined
  readonly port?: number
}

/** The static probe in a one-file rootfs, cached by the hash of the binary. */
async function prepareProbeRootfs(deps: SelfTestDeps): Promise<string> {
  if (!deps.probeServer)
    throw new InitlessError(
      'ERR_CONFIG_INVALID',
      `no probe server installed in ${NATIVE_DIR}: run scripts/build-native.sh (scripts/provision.sh runs it)`,
    )
  const binary = await readFile(deps.probeServer)
  const hash = createHash('sha256').update(binary).digest('hex').slice(0, 16)
  const rootfs = join(deps.workDir, `probe-rootfs-${hash}`)
  if (
    await stat(join(rootfs, 'probe-server')).then(
      () => true,
      () => false,
    )
  )
    return rootfs
  const tmp = `${rootfs}.tmp-${process.pid}`
  await rm(tmp, { recursive: true, force: true })
  for (const d of ['proc', 'dev', 'sys', 'etc', 'tmp']) await mkdir(join(tmp, d), { recursive: true })
  await copyFile(deps.probeServer, join(tmp, 'probe-server'))
  await chmod(join(tmp, 'probe-server'), 0o755)
  await chmod(join(tmp, 'tmp'), 0o1777)
  await writeFile(join(tmp, 'etc', 'hosts'), '127.0.0.1 localhost\n')
  await rm(rootfs, { recursive: true, force: true })
  await rename(tmp, rootfs)
  return rootfs
}

export async function runRestoreSelfTest(deps: SelfTestDeps): Promise<SelfTestStep[]> {
  const steps: SelfTestStep[] = []
  const port = deps.port ?? 8080
  const tag = randomBytes(4).toString('hex')
  const snapshotDir = join(deps.workDir, `snapshot-${tag}`)
  const imagesDir = join(snapshotDir, 'images')
  const live: Sandbox[] = []

  async function step<T>(name: string, fn: () => Promise<{ value: T; detail: string }>): Promise<T> {
    const started = performance.now()
    try {
      const { value, detail } = await fn()
      steps.push({ name, ok: true, ms: performance.now() - started, detail })
      return value
    } catch (err) {
      steps.push({ name, ok: false, ms: performance.now() - started, detail: errorMessage(err) })
      throw err
    }
  }

  const processSpec = {
    args: ['/probe-server'],
    env: ['PROBE_MB=16', `PROBE_PORT=${port}`],
    cwd: '/',
    uid: 0,
    gid: 0,
  }
  const limits = { memoryBytes: 256 * 1024 * 1024, cpus: 1, pids: 64 }

  /** Wait until the probe server in `sb` answers, failing fast if its process is gone. */
  async function probeAnswers(sb: Sandbox, intervalMs: number): Promise<void> {
    const pid = await readPidFile(sb.pidFile)
    await waitReady(sb.netns.ip, port, {
      path: '/',
      expect: 'initless-probe ok',
      timeoutMs: 10_000,
      intervalMs,
      isAlive: () => isProcessAlive(pid),
    })
  }

  async function restoreAndProbe(mode: 'eager' | 'lazy', lowers: string[]): Promise<void> {
    const sb = await deps.sandboxes.prepare({
      id: `selftest-${mode}-${tag}`,
      fn: 'selftest',
      lowers,
      process: processSpec,
      ...limits,
      forRestore: true,
    })
    live.push(sb)
    // Debug-level restore.log: it names the pages a lazy restore left to the daemon.
    const { daemon } = await restoreIntoSandbox(deps, sb, imagesDir, mode === 'lazy', undefined, {
      criuLogLevel: 4,
    })
    await probeAnswers(sb, 2)
    const res = await httpOnce(sb.netns.ip, port, '/')
    // The checkpoint was taken after one request, readiness made the second: this is the third.
    if (!res.body.includes('requests=3')) throw new Error(`restored state is wrong: ${res.body.trim()}`)
    // The filter runc installed at the bake came back with the process.
    const seccomp = await readSeccompMode(await readPidFile(sb.pidFile))
    if (seccomp !== 2)
      throw new Error(`the restored process has Seccomp: ${seccomp ?? 'unknown'}, not 2 (filter)`)
    if (mode === 'lazy') {
      const log = await readFile(join(sb.criuWorkDir, 'restore.log'), 'utf8').catch(() => '')
      if (!/Lazy restore skips \d+ pages/.test(log))
        throw new Error('restore.log shows no lazy restore (no "Lazy restore skips N pages")')
      await Promise.race([daemon?.exited, new Promise((r) => setTimeout(r, 10_000))])
    }
  }

  try {
    const rootfs = await step('compile probe server', async () => {
      const dir = await prepareProbeRootfs(deps)
      return { value: dir, detail: dir }
    })
    const bake = await step('runc run in its own network namespace', async () => {
      const sb = await deps.sandboxes.prepare({
        id: `selftest-bake-${tag}`,
        fn: 'selftest',
        lowers: [rootfs],
        process: processSpec,
        ...limits,
        forRestore: false,
        seccomp: DEFAULT_SECCOMP_PROFILE,
      })
      live.push(sb)
      await deps.runc.run(sb.id, { bundle: sb.bundle, pidFile: sb.pidFile, outputFile: sb.logFile })
      await probeAnswers(sb, 5)
      return { value: sb, detail: `answered at ${sb.netns.ip}:${port}` }
    })
    await step('checkpoint with CRIU', async () => {
      await mkdir(imagesDir, { recursive: true })
      await deps.runc.checkpoint(bake.id, { imagePath: imagesDir, workPath: bake.criuWorkDir })
      // The bake's overlay upper holds files written before the checkpoint: restores layer it in.
      live.splice(live.indexOf(bake), 1)
      await deps.sandboxes.destroy(bake, { keepUpperAt: join(snapshotDir, 'upper') })
      return { value: undefined, detail: imagesDir }
    })
    const lowers = [join(snapshotDir, 'upper'), rootfs]
    await step('eager restore answers', async () => {
      await restoreAndProbe('eager', lowers)
      return { value: undefined, detail: 'state and seccomp filter preserved' }
    })
    await step('lazy restore answers', async () => {
      await restoreAndProbe('lazy', lowers)
      return {
        value: undefined,
        detail: 'state and seccomp filter preserved, pages served by criu lazy-pages',
      }
    })
  } catch {
    // Recorded in steps; cleanup below runs either way.
  } finally {
    if (!process.env.SELFTEST_KEEP)
      for (const sb of live) await deps.sandboxes.destroy(sb).catch(() => undefined)
    await rm(snapshotDir, { recursive: true, force: true })
  }
  return steps
}
