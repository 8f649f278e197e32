'use strict'
// ts-compile: TypeScript as a service on Debian's Node.js 18 and node-typescript 4.8.
//   POST /       TypeScript source in the body -> transpiled JavaScript (ts.transpileModule)
//   POST /check  TypeScript source in the body -> JSON: type-check diagnostics + emitted JavaScript
// Loading the compiler is the heavy part of a cold start (~0.5 s to require it, more for the first
// compile and for parsing the standard library declarations); a checkpoint taken after warm-up
// keeps the loaded, JIT-compiled compiler and the parsed lib.*.d.ts files.
const http = require('node:http')
const path = require('node:path')
const fs = require('node:fs')

const t0 = process.hrtime.bigint()
const ts = require('typescript')
const requireMs = Number(process.hrtime.bigint() - t0) / 1e6

const PORT = Number(process.env.PORT || 8080)
const HOST = process.env.HOST || '0.0.0.0'
const MAX_BODY = Number(process.env.MAX_BODY_BYTES || 1024 * 1024)
const LIB_DIR = path.dirname(ts.getDefaultLibFilePath({}))

const TARGETS = {
  es5: ts.ScriptTarget.ES5,
  es2015: ts.ScriptTarget.ES2015,
  es2017: ts.ScriptTarget.ES2017,
  es2018: ts.ScriptTarget.ES2018,
  es2019: ts.ScriptTarget.ES2019,
  es2020: ts.ScriptTarget.ES2020,
  es2021: ts.ScriptTarget.ES2021,
  es2022: ts.ScriptTarget.ES2022,
  esnext: ts.ScriptTarget.ESNext,
}
const MODULES = {
  commonjs: ts.ModuleKind.CommonJS,
  es2015: ts.ModuleKind.ES2015,
  es2020: ts.ModuleKind.ES2020,
  es2022: ts.ModuleKind.ES2022,
  esnext: ts.ModuleKind.ESNext,
  none: ts.ModuleKind.None,
}
const JSX = { preserve: ts.JsxEmit.Preserve, react: ts.JsxEmit.React, 'react-jsx': ts.JsxEmit.ReactJSX }

class HttpError extends Error {
  constructor(status, message) {
    super(message)
    this.status = status
  }
}

function compilerOptions(query) {
  const pick = (name, table, dflt) => {
    const v = (query.get(name) || dflt).toLowerCase()
    if (!(v in table))
      throw new HttpError(400, `unknown ${name} '${v}' (one of: ${Object.keys(table).join(', ')})`)
    return table[v]
  }
  const options = {
    target: pick('target', TARGETS, 'es2020'),
    module: pick('module', MODULES, 'commonjs'),
    strict: query.get('strict') !== 'false',
    esModuleInterop: true,
    sourceMap: false,
    newLine: ts.NewLineKind.LineFeed,
  }
  if (query.has('jsx')) options.jsx = pick('jsx', JSX, 'react')
  return options
}

function fileName(options) {
  return options.jsx === undefined ? '/input.ts' : '/input.tsx'
}

function formatDiagnostics(diags) {
  return diags.map((d) => {
    const out = {
      code: d.code,
      category: ts.DiagnosticCategory[d.category].toLowerCase(),
      message: ts.flattenDiagnosticMessageText(d.messageText, '\n'),
    }
    if (d.file && d.start !== undefined) {
      const { line, character } = d.file.getLineAndCharacterOfPosition(d.start)
      Object.assign(out, { line: line + 1, column: character + 1 })
    }
    return out
  })
}

function transpile(source, options) {
  const r = ts.transpileModule(source, {
    compilerOptions: options,
    fileName: fileName(options),
    reportDiagnostics: true,
  })
  return { output: r.outputText, diagnostics: formatDiagnostics(r.diagnostics || []) }
}

// Parsed standard-library declaration files, shared by every type-check (they never change).
const libCache = new Map()
function libSourceFile(file, target) {
  const key = `${target}:${file}`
  let sf = libCache.get(key)
  if (!sf) {
    sf = ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), target, true)
    libCache.set(key, sf)
  }
  return sf
}

function check(source, options) {
  const name = fileName(options)
  const opts = {
    ...options,
    lib: [`lib.${ts.ScriptTarget[options.target].toLowerCase()}.d.ts`],
    types: [],
    noResolve: true,
    skipLibCheck: true,
    noEmitOnError: false,
  }
  if (options.target === ts.ScriptTarget.Latest || options.target === ts.ScriptTarget.ESNext)
    opts.lib = ['lib.esnext.d.ts']
  const input = ts.createSourceFile(name, source, options.target, true)
  let output = ''
  const host = {
    getSourceFile: (f) =>
      f === name
        ? input
        : f.startsWith(LIB_DIR) && fs.existsSync(f)
          ? libSourceFile(f, options.target)
          : undefined,
    getDefaultLibFileName: (o) => ts.getDefaultLibFilePath(o),
    getDefaultLibLocation: () => LIB_DIR,
    writeFile: (f, text) => {
      if (/\.jsx?$/.test(f)) output = text
    },
    getCurrentDirectory: () => '/',
    getDirectories: () => [],
    fileExists: (f) => f === name || (f.startsWith(LIB_DIR) && fs.existsSync(f)),
    readFile: (f) => (f === name ? source : f.startsWith(LIB_DIR) ? fs.readFileSync(f, 'utf8') : undefined),
    getCanonicalFileName: (f) => f,
    useCaseSensitiveFileNames: () => true,
    getNewLine: () => '\n',
  }
  const program = ts.createProgram({ rootNames: [name], options: opts, host })
  const diagnostics = [...program.getSyntacticDiagnostics(input), ...program.getSemanticDiagnostics(input)]
  program.emit(input)
  return { output, diagnostics: formatDiagnostics(diagnostics) }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] || 0)
    if (declared > MAX_BODY) return reject(new HttpError(413, `body larger than ${MAX_BODY} bytes`))
    const chunks = []
    let size = 0
    req.on('data', (c) => {
      size += c.length
      if (size > MAX_BODY) {
        reject(new HttpError(413, `body larger than ${MAX_BODY} bytes`))
        req.resume()
        return
      }
      chunks.push(c)
    })
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    req.on('error', reject)
  })
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) })
  res.end(body)
}
const sendJson = (res, status, obj) =>
  send(res, status, 'application/json; charset=utf-8', JSON.stringify(obj) + '\n')

async function handle(req, res) {
  const url = new URL(req.url || '/', 'http://localhost')
  if (url.pathname === '/healthz') {
    req.resume()
    return send(res, 200, 'text/plain; charset=utf-8', `ok typescript ${ts.version}\n`)
  }
  if (url.pathname === '/' && (req.method === 'GET' || req.method === 'HEAD')) {
    req.resume()
    return sendJson(res, 200, {
      service: 'ts-compile',
      typescript: ts.version,
      node: process.version,
      usage: {
        'POST /': 'TypeScript in the body -> JavaScript',
        'POST /check': 'TypeScript in the body -> JSON {diagnostics, output}',
      },
      query: {
        target: Object.keys(TARGETS),
        module: Object.keys(MODULES),
        jsx: Object.keys(JSX),
        strict: ['true', 'false'],
      },
    })
  }
  if ((url.pathname === '/' || url.pathname === '/check') && req.method === 'POST') {
    const options = compilerOptions(url.searchParams)
    const source = await readBody(req)
    const started = process.hrtime.bigint()
    if (url.pathname === '/check') {
      const result = check(source, options)
      res.setHeader('x-compile-ms', (Number(process.hrtime.bigint() - started) / 1e6).toFixed(2))
      return sendJson(res, 200, result)
    }
    const { output, diagnostics } = transpile(source, options)
    res.setHeader('x-compile-ms', (Number(process.hrtime.bigint() - started) / 1e6).toFixed(2))
    if (diagnostics.length) return sendJson(res, 422, { error: 'syntax errors', diagnostics, output })
    return send(res, 200, 'text/javascript; charset=utf-8', output)
  }
  req.resume()
  throw new HttpError(
    url.pathname === '/' || url.pathname === '/check' ? 405 : 404,
    url.pathname === '/' || url.pathname === '/check' ? 'method not allowed' : 'not found',
  )
}

// Idle GC: type-checking leaves tens of MB of garbage on the V8 heap. When the process runs with
// --expose-gc, one full GC runs once the server has been idle for IDLE_GC_MS after serving
// requests, so a checkpoint taken after warm-up holds live data only (~1/3 smaller).
const IDLE_GC_MS = Number(process.env.IDLE_GC_MS || 300)
let inFlight = 0
let idleTimer = null
function requestStarted() {
  inFlight++
  if (idleTimer) {
    clearTimeout(idleTimer)
    idleTimer = null
  }
}
function requestDone() {
  if (--inFlight > 0 || typeof global.gc !== 'function' || IDLE_GC_MS <= 0) return
  if (idleTimer) clearTimeout(idleTimer)
  idleTimer = setTimeout(() => {
    idleTimer = null
    if (inFlight === 0) global.gc()
  }, IDLE_GC_MS)
  idleTimer.unref()
}

const server = http.createServer((req, res) => {
  requestStarted()
  let done = false
  const finish = () => {
    if (!done) {
      done = true
      requestDone()
    }
  }
  res.on('finish', finish)
  res.on('close', finish)
  handle(req, res).catch((err) => {
    const status = err instanceof HttpError ? err.status : 500
    if (status === 500) console.error('ts-compile: request failed:', err)
    if (res.headersSent) return res.destroy()
    if (status === 413) res.setHeader('connection', 'close')
    sendJson(res, status, { error: err.message })
  })
})
server.keepAliveTimeout = 65_000
server.headersTimeout = 66_000
server.listen(PORT, HOST, () =>
  console.log(
    `ts-compile listening on ${HOST}:${PORT} (typescript ${ts.version} loaded in ${requireMs.toFixed(0)} ms, node ${process.version})`,
  ),
)

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    console.log(`ts-compile: ${sig}, closing`)
    server.close(() => process.exit(0))
    server.closeIdleConnections?.()
    setTimeout(() => process.exit(0), 2000).unref()
  })
}
