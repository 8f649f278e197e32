/**
 * IPv4 subnets: the instance address plan of a host (executor/adapters/network.ts) and the claim every
 * executor makes on its subnet in the registry, so two hosts never hand out the same addresses.
 */

export interface Cidr {
  /** The subnet's first address, as a number. */
  readonly base: number
  readonly bits: number
}

export function parseCidr(cidr: string): Cidr {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr)
  const octets = m ? m.slice(1, 5).map(Number) : []
  const bits = m ? Number(m[5]) : NaN
  if (!m || octets.some((o) => o > 255) || bits < 8 || bits > 30) {
    throw new Error(`invalid subnet '${cidr}': expected an IPv4 CIDR between /8 and /30`)
  }
  const ip = octets.reduce((acc, o) => acc * 256 + o, 0)
  return { base: ip - (ip % 2 ** (32 - bits)), bits }
}

export function formatIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.')
}

/** The subnet in its canonical form (host bits cleared): `10.214.3.0/16` is `10.214.0.0/16`. */
export function canonicalCidr(cidr: string): string {
  const c = parseCidr(cidr)
  return `${formatIp(c.base)}/${c.bits}`
}

/** The subnet's first and last address, as numbers. */
export function subnetRange(cidr: string): { readonly first: number; readonly last: number } {
  const c = parseCidr(cidr)
  return { first: c.base, last: c.base + 2 ** (32 - c.bits) - 1 }
}

/** A dotted IPv4 address as a number; undefined for anything else. */
export function parseIp(ip: string): number | undefined {
  const octets = ip.split('.').map(Number)
  if (octets.length !== 4 || octets.some((o) => !Number.isInteger(o) || o < 0 || o > 255)) return undefined
  return octets.reduce((acc, o) => acc * 256 + o, 0)
}

/** Is the IPv4 address `ip` in the subnet? */
export function subnetHas(cidr: string, ip: string): boolean {
  const n = parseIp(ip)
  const { first, last } = subnetRange(cidr)
  return n !== undefined && first <= n && n <= last
}

/** Do two subnets share an address? Unparseable ones share nothing. */
export function subnetsOverlap(a: string, b: string): boolean {
  try {
    const x = subnetRange(a)
    const y = subnetRange(b)
    return x.first <= y.last && y.first <= x.last
  } catch {
    return false
  }
}
