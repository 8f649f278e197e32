import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ESLint } from 'eslint'

// The real configuration (eslint.config.js), asked for the rules of each folder, applied with
// ESLint's own Linter to the imports alone (no type information needed for no-restricted-imports).
const eslint = new ESLint()

async function restricted(file: string, specifier: string): Promise<string[]> {
  const config = (await eslint.calculateConfigForFile(file)) as { rules?: Record<string, unknown> }
  const rule = config.rules?.['no-restricted-imports']
  const { Linter } = await import('eslint')
  const messages = new Linter({ configType: 'flat' }).verify(
    `import x from '${specifier}'\nexport default x\n`,
    [{ files: ['**/*.ts'], rules: rule ? { 'no-restricted-imports': rule as never } : {} }],
    file,
  )
  return messages.map((m) => m.ruleId ?? m.message)
}

const cases: { file: string; specifier: string; isRefused: boolean }[] = [
  { file: 'gateway/app.ts', specifier: '../executor/config.ts', isRefused: true },
  { file: 'gateway/routes/admin.ts', specifier: '../../executor/config.ts', isRefused: true },
  { file: 'executor/instances/worker.ts', specifier: '../gateway/app.ts', isRefused: true },
  { file: 'executor/runtimes/selftest.ts', specifier: '../../gateway/app.ts', isRefused: true },
  { file: 'shared/registry.ts', specifier: '../executor/config.ts', isRefused: true },
  { file: 'shared/registry.ts', specifier: '../cli/launcher.ts', isRefused: true },
  { file: 'gateway/app.ts', specifier: '../test/support/e2e.ts', isRefused: true },
  { file: 'cli/main.ts', specifier: '../test/support/e2e.ts', isRefused: true },
  { file: 'gateway/app.ts', specifier: '../shared/registry-fake.ts', isRefused: true },
  { file: 'executor/wiring.ts', specifier: './adapters/exec-fake.ts', isRefused: true },
  { file: 'executor/adapters/criu.ts', specifier: '../sandbox/sandbox.ts', isRefused: true },
  { file: 'executor/adapters/criu.ts', specifier: '../config.ts', isRefused: true },
  { file: 'executor/sandbox/sandbox.ts', specifier: '../runtimes/runtimes.ts', isRefused: true },
  { file: 'executor/adapters/criu.ts', specifier: './exec.ts', isRefused: false },
  { file: 'executor/sandbox/sandbox.ts', specifier: '../adapters/runc.ts', isRefused: false },
  { file: 'executor/runtimes/runtimes.ts', specifier: '../sandbox/sandbox.ts', isRefused: false },
  { file: 'gateway/app.ts', specifier: './test-support.ts', isRefused: true },
  { file: 'gateway/app.ts', specifier: '../shared/registry.ts', isRefused: false },
  { file: 'executor/wiring.ts', specifier: '../shared/contracts.ts', isRefused: false },
  { file: 'cli/main.ts', specifier: '../executor/config.ts', isRefused: false },
  { file: 'cli/main.ts', specifier: '../gateway/config.ts', isRefused: false },
  { file: 'gateway/app.test.ts', specifier: './test-support.ts', isRefused: false },
  { file: 'test/e2e-gateway.test.ts', specifier: '../executor/config.ts', isRefused: false },
]

for (const c of cases) {
  test(`${c.file} importing ${c.specifier} is ${c.isRefused ? 'refused' : 'allowed'}`, async () => {
    const found = await restricted(c.file, c.specifier)
    assert.deepEqual(found, c.isRefused ? ['no-restricted-imports'] : [])
  })
}
