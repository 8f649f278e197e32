'use strict'
// hello-node: a plain Node.js `http` server. GET / answers a small JSON greeting; POST /echo streams
// the request body straight back with the caller's Content-Type (the gateway's body-streaming tests).
const http = require('node:http')

const PORT = Number(process.env.PORT || 8080)
const HOST = process.env.HOST || '0.0.0.0'

function sendJson(res, status, obj) {
  const body = JSON.stringify(obj) + '\n'
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
  })
  res.end(body)
}

const server = http.createServer((req, res) => {
  const path = (req.url || '/').split('?')[0]
  if (path === '/healthz') {
    if (req.method !== 'GET' && req.method !== 'HEAD')
      return sendJson(res, 405, { error: 'method not allowed' })
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'content-length': 3 })
    return res.end('ok\n')
  }
  if (path === '/echo') {
    if (req.method !== 'POST' && req.method !== 'PUT') return sendJson(res, 405, { error: 'use POST /echo' })
    const headers = { 'content-type': req.headers['content-type'] || 'application/octet-stream' }
    // Keep the length when the client sent one; otherwise the reply is chunked, as the request was.
    if (req.headers['content-length'] !== undefined) headers['content-length'] = req.headers['content-length']
    res.writeHead(200, headers)
    req.pipe(res)
    req.on('error', () => res.destroy())
    return
  }
  // Drain any request body so keep-alive connections stay usable.
  req.resume()
  if (req.method !== 'GET' && req.method !== 'HEAD')
    return sendJson(res, 405, { error: 'method not allowed' })
  const query = (req.url || '').includes('?') ? req.url.slice(req.url.indexOf('?') + 1) : undefined
  sendJson(res, 200, { message: 'hello from node', method: req.method, path, query })
})

server.keepAliveTimeout = 65_000 // longer than a typical proxy's idle timeout
server.headersTimeout = 66_000
server.listen(PORT, HOST, () =>
  console.log(`hello-node listening on ${HOST}:${PORT} (node ${process.version}, pid ${process.pid})`),
)

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    console.log(`hello-node: ${sig}, closing`)
    server.close(() => process.exit(0))
    server.closeIdleConnections?.()
    setTimeout(() => process.exit(0), 2000).unref()
  })
}
