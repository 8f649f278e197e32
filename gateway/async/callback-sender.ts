/**
 * Sends an invocation's result to its X-Callback-Url: a JSON POST, resolved through the callback
 * policy's lookup so the address is checked when the connection is made, not only at accept time.
 * Anything but a 2xx answer rejects (the callback queue retries it).
 */
import { request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import type { CallbackPolicy } from './callback-target.ts'
import type { CallbackPayload } from './invocation.ts'

export type SendCallback = (url: string, payload: CallbackPayload) => Promise<void>

export function createCallbackSender(deps: {
  readonly policy: Pick<CallbackPolicy, 'lookup' | 'isAllowed'>
  readonly timeoutMs: number
}): SendCallback {
  return (raw, payload) =>
    new Promise<void>((resolve, reject) => {
      const url = new URL(raw)
      const host = url.hostname.replace(/^\[|\]$/g, '')
      // A literal address never goes through lookup: check it here.
      if (/^[\d.]+$|:/.test(host) && !deps.policy.isAllowed(host))
        return reject(new Error(`callback address ${host} is not allowed`))
      const body = Buffer.from(JSON.stringify(payload))
      const send = url.protocol === 'https:' ? httpsRequest : httpRequest
      const req = send(
        url,
        {
          method: 'POST',
          lookup: deps.policy.lookup,
          headers: {
            'content-type': 'application/json',
            'content-length': body.length,
            'x-invocation-id': payload.id,
            'x-invocation-state': payload.state,
          },
          timeout: deps.timeoutMs,
        },
        (res) => {
          res.resume()
          res.on('end', () => {
            const status = res.statusCode ?? 0
            if (status >= 200 && status < 300) resolve()
            else reject(new Error(`callback answered ${status}`))
          })
          res.on('error', reject)
        },
      )
      req.on('timeout', () => req.destroy(new Error(`callback not answered within ${deps.timeoutMs} ms`)))
      req.on('error', reject)
      req.end(body)
    })
}
