/**
 * Which addresses an X-Callback-Url may reach. Callbacks are requests the gateway makes on a
 * caller's behalf, so without a rule they would let any caller reach what only the gateway can
 * (its loopback services, the cloud metadata address, the function instances): SSRF. The rule is
 * checked when the invocation is accepted (400 then) and again on every address the name resolves
 * to when the callback is sent (a name may resolve elsewhere later).
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns'
import { BlockList, isIP, type LookupFunction } from 'node:net'
import { InitlessError } from '../../shared/errors.ts'

/** Refused unless the allow-list names them: loopback, link-local, unspecified, multicast. */
const REFUSED_V4 = [
  ['0.0.0.0', 8],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const
const REFUSED_V6 = [
  ['::', 128],
  ['::1', 128],
  ['fe80::', 10],
  ['fc00::', 7],
  ['ff00::', 8],
] as const

export interface CallbackPolicy {
  /** Whether a callback may be sent to this IP address. */
  isAllowed(address: string): boolean
  /**
   * Check a callback URL: http or https, and every address its host resolves to allowed. Throws
   * ERR_ASYNC_CALLBACK_REFUSED saying why.
   */
  check(url: string): Promise<URL>
  /** A `lookup` for node:http that resolves only to allowed addresses (checked at send time). */
  readonly lookup: LookupFunction
}

export interface CallbackPolicyOptions {
  /**
   * Addresses (`a.b.c.d`, `::1`) and CIDRs (`10.0.0.0/8`) callbacks may reach. Empty: any address
   * outside the refused ranges.
   */
  readonly allow: readonly string[]
  /** The instance subnet(s): never reachable by callbacks unless allowed. */
  readonly instanceSubnets: readonly string[]
  /** Resolver (tests). Default node:dns lookup. */
  readonly resolve?: (host: string) => Promise<string[]>
}

/** Parse `INITLESS_CALLBACK_ALLOW`-style entries into a BlockList; throws on a bad entry. */
export function addressList(entries: readonly string[]): BlockList {
  const list = new BlockList()
  for (const raw of entries) {
    const entry = raw.trim()
    const [address = '', prefix] = entry.split('/')
    const family = isIP(address)
    if (!family) throw new Error(`'${entry}' is not an IP address or CIDR`)
    const type = family === 4 ? 'ipv4' : 'ipv6'
    if (prefix === undefined) list.addAddress(address, type)
    else {
      const bits = Number(prefix)
      if (!/^\d{1,3}$/.test(prefix) || bits > (family === 4 ? 32 : 128))
        throw new Error(`'${entry}' has an invalid prefix length`)
      list.addSubnet(address, bits, type)
    }
  }
  return list
}

/** `::ffff:1.2.3.4` is 1.2.3.4. */
function plain(address: string): { address: string; type: 'ipv4' | 'ipv6' } {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)
  if (mapped) return { address: mapped[1]!, type: 'ipv4' }
  return { address, type: isIP(address) === 6 ? 'ipv6' : 'ipv4' }
}

const refused = (reason: string) => new InitlessError('ERR_ASYNC_CALLBACK_REFUSED', reason)

const defaultResolve = (host: string) =>
  new Promise<string[]>((resolve, reject) =>
    dnsLookup(host, { all: true }, (err, addresses: LookupAddress[]) =>
      err ? reject(err) : resolve(addresses.map((a) => a.address)),
    ),
  )

export function createCallbackPolicy(opts: CallbackPolicyOptions): CallbackPolicy {
  const allow = opts.allow.length ? addressList(opts.allow) : undefined
  const deny = new BlockList()
  for (const [a, bits] of REFUSED_V4) deny.addSubnet(a, bits, 'ipv4')
  for (const [a, bits] of REFUSED_V6) deny.addSubnet(a, bits, 'ipv6')
  for (const subnet of opts.instanceSubnets) {
    const [a = '', bits = '32'] = subnet.split('/')
    deny.addSubnet(a, Number(bits), 'ipv4')
  }
  const resolve = opts.resolve ?? defaultResolve

  const isAllowed = (raw: string): boolean => {
    if (!isIP(raw)) return false
    const { address, type } = plain(raw)
    if (allow) return allow.check(address, type)
    return !deny.check(address, type)
  }

  const lookup: LookupFunction = (hostname, options, callback) => {
    resolve(hostname).then(
      (addresses) => {
        const ok = addresses.filter(isAllowed)
        if (!ok.length) {
          const err: NodeJS.ErrnoException = new Error(
            `callback host ${hostname} resolves to no allowed address`,
          )
          err.code = 'ECALLBACKREFUSED'
          return callback(err, '')
        }
        if (options.all)
          return callback(
            null,
            ok.map((a) => ({ address: a, family: isIP(a) })),
          )
        callback(null, ok[0]!, isIP(ok[0]!))
      },
      (err: NodeJS.ErrnoException) => callback(err, ''),
    )
  }

  return {
    isAllowed,
    lookup,
    async check(raw) {
      let url: URL
      try {
        url = new URL(raw)
      } catch {
        throw refused('X-Callback-Url is not an absolute URL')
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:')
        throw refused('X-Callback-Url must be an http or https URL')
      if (url.username || url.password) throw refused('X-Callback-Url must not carry credentials')
      const host = url.hostname.replace(/^\[|\]$/g, '')
      let addresses: string[]
      try {
        addresses = isIP(host) ? [host] : await resolve(host)
      } catch {
        throw refused(`the callback host ${host} does not resolve`)
      }
      const denied = addresses.filter((a) => !isAllowed(a))
      if (!addresses.length || denied.length)
        throw refused(
          `callbacks to ${denied.join(', ') || host} are not allowed (INITLESS_CALLBACK_ALLOW; loopback, ` +
            'link-local and instance addresses are refused unless listed)',
        )
      return url
    },
  }
}
