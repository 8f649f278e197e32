/** The Server-Timing header of proxied responses (durations in ms, as the header defines). */
import type { ColdStartPhases } from '../shared/contracts.ts'

export interface TimingInput {
  readonly isCold: boolean
  /** Served by a standby instance thawed for it: `thawed`, never `cold`. */
  readonly isThawed?: boolean
  /** Time the request waited in the gateway for a slot. */
  readonly waitedMs: number
  /** The instance's restore phases (cold requests). */
  readonly phases?: ColdStartPhases | undefined
  /** The cold start booted the function (no snapshot of it on that host, or its restore failed). */
  readonly isBooted?: boolean | undefined
  readonly upstreamMs: number
}

const ms = (v: number) => (Math.round(v * 10) / 10).toString()

/**
 * `warm, upstream;dur=1.2` for a request served by a running instance;
 * `cold, wait;dur=.., queue;dur=.., sandbox;dur=.., restore;dur=.., criu;dur=.., ready;dur=.., upstream;dur=..`
 * for one that waited for a restore (phases from the executor's result, recorded in the registry);
 * `thawed, wait;dur=.., upstream;dur=..` for one served by a standby instance thawed for it;
 * `cold, boot, ...` when that instance was booted instead (its `restore` is the container start).
 */
export function serverTiming(t: TimingInput): string {
  const parts = [t.isThawed ? 'thawed' : t.isCold ? 'cold' : 'warm']
  if (t.isCold && t.isBooted) parts.push('boot')
  if (t.isCold || t.isThawed || t.waitedMs >= 1) parts.push(`wait;dur=${ms(t.waitedMs)}`)
  if (t.isCold && t.phases) {
    parts.push(
      `queue;dur=${ms(t.phases.queueMs)}`,
      `sandbox;dur=${ms(t.phases.sandboxMs)}`,
      `restore;dur=${ms(t.phases.restoreMs)}`,
      ...(t.phases.criuMs === undefined ? [] : [`criu;dur=${ms(t.phases.criuMs)}`]),
      ...(t.phases.secretsMs === undefined ? [] : [`secrets;dur=${ms(t.phases.secretsMs)}`]),
      `ready;dur=${ms(t.phases.readyMs)}`,
    )
  }
  parts.push(`upstream;dur=${ms(t.upstreamMs)}`)
  return parts.join(', ')
}
