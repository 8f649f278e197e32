/** Draining the gateway's HTTP server at shutdown (the steps themselves: shared/shutdown.ts). */

/** The parts of an http.Server that draining uses. */
export interface DrainableServer {
  close(callback?: (err?: Error) => void): unknown
  closeIdleConnections(): void
  closeAllConnections(): void
}

/**
 * Stop accepting connections and wait for in-flight requests; after `graceMs` cut the rest off.
 * Idle keep-alive connections are closed at once.
 */
export function drainServer(server: DrainableServer, graceMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      server.closeAllConnections()
      resolve()
    }, graceMs)
    server.close(() => {
      clearTimeout(timer)
      resolve()
    })
    server.closeIdleConnections()
  })
}
