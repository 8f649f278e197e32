/**
 * latest.svg: the result drawn with Vega-Lite, rendered to SVG in Node by Vega's headless view
 * (renderer 'none' + toSVG(): no browser, no native canvas).
 */
import { parse, View } from 'vega'
import { compile, type TopLevelSpec } from 'vega-lite'
import type { BenchResult } from './report.ts'
import { rcuNote } from './env.ts'

const RUNTIME_ORDER = ['boot', 'docker', 'eager', 'lazy', 'lazy+pool']
const WARM_ORDER = ['direct', 'gateway', 'nginx']

export function chartSpec(r: BenchResult): TopLevelSpec {
  const cold = r.coldStart
    .filter((c) => Number.isFinite(c.p50Ms))
    .map((c) => ({ function: c.function, runtime: c.runtime, p50: c.p50Ms, p95: c.p95Ms }))
  const warm = r.warm.map((w) => ({
    target: w.target,
    connections: `${w.connections} connection${w.connections === 1 ? '' : 's'}`,
    p50: w.p50Ms,
    rps: w.rps,
  }))
  // Log scale from the power of ten below the fastest p50 to the one above the slowest p95: bars
  // start at the domain's floor (a log scale has no zero).
  const lo = 10 ** Math.floor(Math.log10(Math.max(1, Math.min(1e6, ...cold.map((c) => c.p50)))))
  const hi = 10 ** Math.ceil(Math.log10(Math.max(10, ...cold.map((c) => Math.max(c.p50, c.p95 || 0)))))
  const panels: TopLevelSpec[] = []
  if (cold.length)
    panels.push({
      title: 'Cold start through the gateway: time to first byte (p50 bar, p95 tick; log scale)',
      data: { values: cold },
      width: 560,
      height: 260,
      encoding: {
        x: { field: 'function', type: 'nominal', title: null, axis: { labelAngle: 0 } },
        xOffset: { field: 'runtime', type: 'nominal', sort: RUNTIME_ORDER },
        color: { field: 'runtime', type: 'nominal', sort: RUNTIME_ORDER, title: 'runtime' },
      },
      layer: [
        {
          mark: { type: 'bar' },
          encoding: {
            y: {
              field: 'p50',
              type: 'quantitative',
              scale: { type: 'log', domain: [lo, hi] },
              title: 'ms (log scale)',
            },
            y2: { datum: lo },
            tooltip: [{ field: 'p50' }, { field: 'p95' }],
          },
        },
        {
          mark: { type: 'tick', color: 'black', thickness: 1 },
          encoding: { y: { field: 'p95', type: 'quantitative' }, color: { value: 'black' } },
        },
        {
          mark: { type: 'text', dy: -6, fontSize: 8 },
          encoding: {
            y: { field: 'p50', type: 'quantitative' },
            text: { field: 'p50', type: 'quantitative', format: '.0f' },
            color: { value: 'black' },
          },
        },
      ],
    } as unknown as TopLevelSpec)
  if (warm.length) {
    // One small panel per metric and connection count: 1 and 64 connections differ by 10-100x.
    const panel = (field: 'p50' | 'rps', connections: string) =>
      ({
        title: `${field === 'p50' ? 'p50 latency, ms' : 'req/s'}, ${connections}`,
        data: { values: warm.filter((w) => w.connections === connections) },
        width: 150,
        height: 160,
        encoding: {
          x: { field: 'target', type: 'nominal', title: null, axis: { labelAngle: 0 }, sort: WARM_ORDER },
          color: {
            field: 'target',
            type: 'nominal',
            sort: WARM_ORDER,
            scale: { scheme: 'set2' },
            title: 'warm path',
          },
        },
        layer: [
          { mark: 'bar', encoding: { y: { field, type: 'quantitative', title: null } } },
          {
            mark: { type: 'text', dy: -6, fontSize: 9 },
            encoding: {
              y: { field, type: 'quantitative' },
              text: { field, type: 'quantitative', format: field === 'p50' ? '.2f' : '.0f' },
              color: { value: 'black' },
            },
          },
        ],
      }) as unknown as TopLevelSpec
    const conns = [...new Set(warm.map((w) => w.connections))]
    panels.push({
      hconcat: [...conns.map((c) => panel('p50', c)), ...conns.map((c) => panel('rps', c))],
      resolve: { scale: { y: 'independent' } },
    } as unknown as TopLevelSpec)
  }
  const subtitle = [
    `${r.machine.cpu}, ${r.machine.cores} cores, kernel ${r.machine.kernel}${rcuNote(r.machine)}; CRIU ${r.versions.criu}, runc ${r.versions.runc}, Docker ${r.versions.docker}, Node ${r.versions.node}`,
    ...r.bursts.map(
      (b) =>
        `Burst from zero: ${b.requests} requests to ${b.function}, ${b.errors} errors, ${b.restores} restores, p50 ${b.p50Ms} ms, p99 ${b.p99Ms} ms`,
    ),
  ]
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: `initless benchmark, ${r.date}`, subtitle, anchor: 'start' },
    config: { font: 'sans-serif', view: { stroke: null } },
    vconcat: panels,
    resolve: { scale: { color: 'independent' } },
  } as unknown as TopLevelSpec
}

/** Render the chart of `r` to an SVG document. */
export async function renderChart(r: BenchResult): Promise<string> {
  const view = new View(parse(compile(chartSpec(r)).spec), { renderer: 'none' })
  try {
    return await view.toSVG()
  } finally {
    view.finalize()
  }
}
