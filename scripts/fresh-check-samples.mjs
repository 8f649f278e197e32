#!/usr/bin/env node
// Part of scripts/fresh-check.sh, run inside its container from the clone's root while
// `initless up` serves: sends every sample in functions/ one request through the gateway, at its
// readiness path, and checks that it answers 2xx with the expected text as a cold start
// (Server-Timing `cold`: no instance was running). One line per sample; exit code 1 if any failed.
// Usage, from the clone's root (read from stdin, it imports the clone's own `yaml`, wherever this
// file is): node --input-type=module - GATEWAY_URL <scripts/fresh-check-samples.mjs
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { parseDocument } from 'yaml'
/* global fetch, AbortSignal */

const TIMEOUT_MS = 120_000
const gateway = process.argv[2]
if (!gateway) {
  console.error('usage: node --input-type=module - GATEWAY_URL <fresh-check-samples.mjs')
  process.exit(2)
}
let failed = 0
for (const name of readdirSync('functions').sort()) {
  let readiness
  try {
    const doc = parseDocument(readFileSync(join('functions', name, 'function.yaml'), 'utf8'))
    if (doc.errors.length) throw new Error(doc.errors.map((e) => e.message).join('; '))
    const path = doc.getIn(['readiness', 'path']) ?? '/'
    const expect = doc.getIn(['readiness', 'expect']) ?? ''
    if (typeof path !== 'string' || typeof expect !== 'string')
      throw new Error('readiness.path and readiness.expect must be strings')
    readiness = { path, expect }
  } catch (err) {
    console.log(`${name}: FAILED: unreadable function.yaml (${String(err)})`)
    failed++
    continue
  }
  const started = performance.now()
  try {
    const res = await fetch(`${gateway}/fn/${name}${readiness.path}`, {
      signal: AbortSignal.timeout(TIMEOUT_MS),
    })
    const body = await res.text()
    const ms = Math.round(performance.now() - started)
    const timing = res.headers.get('server-timing') ?? ''
    const cold = /(^|,)\s*cold\b/.test(timing)
    const problems = [
      ...(res.ok ? [] : [`status ${res.status}`]),
      ...(body.includes(readiness.expect) ? [] : [`body lacks '${readiness.expect}'`]),
      ...(cold ? [] : ['not a cold start (no `cold` in Server-Timing)']),
    ]
    const what = `GET ${readiness.path} -> ${res.status} in ${ms} ms; Server-Timing: ${timing}`
    if (problems.length) {
      failed++
      console.log(`${name}: FAILED (${problems.join(', ')}): ${what}; body: ${body.slice(0, 300)}`)
    } else {
      console.log(`${name}: ok, cold: ${what}`)
    }
  } catch (err) {
    failed++
    const cause = err instanceof Error && err.cause instanceof Error ? ` (${err.cause.message})` : ''
    console.log(`${name}: FAILED: GET ${readiness.path}: ${String(err)}${cause}`)
  }
}
process.exit(failed ? 1 : 0)
