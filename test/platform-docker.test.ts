import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { loadExecutorConfig } from '../executor/config.ts'
import { createDockerEngine, dockerOptions } from '../executor/adapters/docker.ts'
import { requireServices } from './support/integration.ts'

const config = loadExecutorConfig(process.env)

test('docker: builds an image FROM the local base image and unpacks its filesystem', async (t) => {
  if (!requireServices(t)) return
  const docker = createDockerEngine(dockerOptions(config.INITLESS_DOCKER_HOST))
  const base = await docker.inspectImage(config.INITLESS_BASE_IMAGE)
  assert.ok(base, `base image ${config.INITLESS_BASE_IMAGE} must exist (scripts/provision.sh builds it)`)

  const dir = await mkdtemp(join(tmpdir(), 'initless-build-'))
  const tag = `initless-test/build-${randomUUID().slice(0, 8)}:latest`
  const rootfs = await mkdtemp(join(tmpdir(), 'initless-rootfs-'))
  after(async () => {
    await rm(dir, { recursive: true, force: true })
    await rm(rootfs, { recursive: true, force: true })
    spawn('docker', ['rmi', '-f', tag], { stdio: 'ignore' })
  })
  await writeFile(
    join(dir, 'Dockerfile'),
    'ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${BASE_IMAGE}\nRUN echo built-here > /marker\nCMD ["cat", "/marker"]\n',
  )
  const tar = spawn('tar', ['-c', '-C', dir, '.'], { stdio: ['ignore', 'pipe', 'inherit'] })
  const lines: string[] = []
  const id = await docker.build(tar.stdout, {
    tag,
    dockerfile: 'Dockerfile',
    buildArgs: { BASE_IMAGE: config.INITLESS_BASE_IMAGE },
    onProgress: (p) => lines.push(p.line),
  })
  assert.match(id, /^sha256:[0-9a-f]{64}$/)
  assert.ok(
    lines.some((l) => l.includes('Step')),
    'build progress is reported',
  )
  const image = await docker.inspectImage(tag)
  assert.equal(image?.id, id)
  assert.deepEqual(image?.cmd, ['cat', '/marker'])

  await docker.exportRootfs(id, rootfs)
  assert.equal(await readFile(join(rootfs, 'marker'), 'utf8'), 'built-here\n')
  assert.ok((await readdir(join(rootfs, 'usr', 'bin'))).includes('bash'))
})

test('docker: a failing build reports the failing step', async (t) => {
  if (!requireServices(t)) return
  const docker = createDockerEngine(dockerOptions(config.INITLESS_DOCKER_HOST))
  const dir = await mkdtemp(join(tmpdir(), 'initless-build-'))
  after(() => rm(dir, { recursive: true, force: true }))
  await writeFile(
    join(dir, 'Dockerfile'),
    `FROM ${config.INITLESS_BASE_IMAGE}\nRUN echo about-to-fail && exit 3\n`,
  )
  const tar = spawn('tar', ['-c', '-C', dir, '.'], { stdio: ['ignore', 'pipe', 'inherit'] })
  await assert.rejects(
    docker.build(tar.stdout, {
      tag: `initless-test/fail-${randomUUID().slice(0, 8)}`,
      dockerfile: 'Dockerfile',
      buildArgs: {},
    }),
    (err: Error & { code?: string }) =>
      err.code === 'ERR_IMAGE_BUILD_FAILED' &&
      /about-to-fail/.test(err.message) &&
      /exit 3|returned a non-zero code: 3/.test(err.message),
  )
})
