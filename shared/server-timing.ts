/** Reading a Server-Timing header (RFC: W3C Server Timing), as the gateway writes it. */

/** Server-Timing as name -> duration (ms; undefined for a metric without `dur`), in order. */
export function parseServerTiming(header: string | string[] | undefined): Map<string, number | undefined> {
  const out = new Map<string, number | undefined>()
  const text = Array.isArray(header) ? header.join(', ') : (header ?? '')
  for (const part of text.split(',')) {
    const [name = '', ...params] = part.split(';').map((s) => s.trim())
    if (!name) continue
    const dur = params.find((p) => p.startsWith('dur='))
    out.set(name, dur === undefined ? undefined : Number(dur.slice(4)))
  }
  return out
}
