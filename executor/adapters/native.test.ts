import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { installedHelperPath, installedProbeServer, nativeBuildId } from './native.ts'

test('the installed programs are found by path, with their build id; nothing else counts', async () => {
  const cases: {
    name: string
    /** File contents; a directory where `dirs` names it. */
    files: Record<string, string>
    dirs?: string[]
    helper: boolean
    probe: boolean
    buildId: string | undefined
  }[] = [
    { name: 'nothing installed', files: {}, helper: false, probe: false, buildId: undefined },
    {
      name: 'a full install',
      files: {
        'initless-sandbox-helper': 'elf',
        'initless-probe-server': 'elf',
        'build-id': 'db7efbae50c1\n',
      },
      helper: true,
      probe: true,
      buildId: 'db7efbae50c1',
    },
    {
      name: 'a helper without a build id',
      files: { 'initless-sandbox-helper': 'elf' },
      helper: true,
      probe: false,
      buildId: undefined,
    },
    {
      name: 'a directory where the helper should be',
      files: { 'build-id': '\n' },
      dirs: ['initless-sandbox-helper'],
      helper: false,
      probe: false,
      buildId: undefined,
    },
  ]
  for (const c of cases) {
    const dir = await mkdtemp(join(tmpdir(), 'initless-native-'))
    try {
      for (const [name, content] of Object.entries(c.files)) await writeFile(join(dir, name), content)
      for (const name of c.dirs ?? []) await mkdir(join(dir, name))
      const helper = installedHelperPath(dir)
      assert.equal(helper, c.helper ? join(dir, 'initless-sandbox-helper') : undefined, c.name)
      assert.equal(
        installedProbeServer(dir),
        c.probe ? join(dir, 'initless-probe-server') : undefined,
        c.name,
      )
      assert.equal(nativeBuildId(join(dir, 'initless-sandbox-helper')), c.buildId, c.name)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }
})
