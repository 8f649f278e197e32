// @ts-check
import js from '@eslint/js'
import tseslint from 'typescript-eslint'

/** Import patterns (gitignore syntax, matched against the specifier) that test code matches. */
const TEST_CODE = [
  { group: ['**/test/**', '../test', '../../test'], message: 'production code never imports test/' },
  {
    group: ['**/*-fake', '**/*-fake.ts', '**/test-support', '**/test-support.ts'],
    message: 'fakes and test support are for tests',
  },
]

/** no-restricted-imports per production folder: what each may not import. */
function boundaries() {
  const production = { ignores: ['**/*.test.ts', '**/*-fake.ts', 'gateway/test-support.ts'] }
  const rule = (/** @type {{ group: string[], message: string }[]} */ patterns) => ({
    'no-restricted-imports': ['error', { patterns: [...patterns, ...TEST_CODE] }],
  })
  const other = (/** @type {string} */ dir, /** @type {string} */ why) => ({
    group: [`../${dir}/**`, `../../${dir}/**`, `../../../${dir}/**`],
    message: why,
  })
  const apart = other('gateway', 'gateway/ and executor/ never import each other: share through shared/')
  /** The executor's wings above `wing` in its layering (adapters < sandbox < the rest). */
  const above = (/** @type {string} */ wing, /** @type {string[]} */ wings) => ({
    group: [...wings.map((w) => `../${w}/**`), '../*.ts'],
    message: `executor/${wing}/ imports only the wings below it and shared/ (adapters < sandbox < snapshots, runtimes < instances)`,
  })
  return [
    {
      ...production,
      files: ['gateway/**/*.ts'],
      rules: rule([
        other('executor', 'gateway/ and executor/ never import each other: share through shared/'),
      ]),
    },
    { ...production, files: ['executor/**/*.ts'], rules: rule([apart]) },
    {
      ...production,
      files: ['executor/adapters/**/*.ts'],
      rules: rule([apart, above('adapters', ['sandbox', 'snapshots', 'runtimes', 'instances', 'cluster'])]),
    },
    {
      ...production,
      files: ['executor/sandbox/**/*.ts'],
      rules: rule([apart, above('sandbox', ['snapshots', 'runtimes', 'instances', 'cluster'])]),
    },
    {
      ...production,
      files: ['shared/**/*.ts'],
      rules: rule(
        ['gateway', 'executor', 'cli'].map((d) =>
          other(d, 'shared/ is imported by the processes, never the reverse'),
        ),
      ),
    },
    { ...production, files: ['cli/**/*.ts'], rules: rule([]) },
  ]
}

export default tseslint.config(
  {
    ignores: [
      'node_modules/**',
      'functions/**',
      'bench/results/**',
      'coverage/**',
      '.initless/**',
      'test/fixtures/**',
      'dist/**',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: { allowDefaultProject: ['*.js', '*.mjs', 'bin/*.mjs', 'scripts/*.mjs'] },
        tsconfigRootDir: import.meta.dirname,
      },
      globals: { process: 'readonly', console: 'readonly', setTimeout: 'readonly', URL: 'readonly' },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          allowForKnownSafeCalls: [
            { from: 'package', package: 'node:test', name: ['test', 'it', 'describe', 'suite'] },
          ],
        },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Async functions without await are common in port implementations (fakes, adapters).
      '@typescript-eslint/require-await': 'off',
      'no-console': 'error',
    },
  },
  {
    // Composition roots and scripts may print; library code logs through pino.
    files: ['cli/**', 'bin/**', 'scripts/**', 'bench/**', '**/main.ts'],
    rules: { 'no-console': 'off' },
  },
  // Boundaries: gateway/ and executor/ never import each other (they share through shared/),
  // shared/ imports neither, and production code never imports test code (test/, fakes, test
  // support). The CLI and bench are composition roots and may import both processes' modules.
  ...boundaries(),
  {
    files: ['**/*.test.ts', 'test/**'],
    rules: {
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
    },
  },
)
