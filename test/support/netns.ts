/**
 * Test servers inside network namespaces the tests made: a TCP listener run by python3 under
 * `ip netns exec`, so that it lives in the namespace and nowhere else.
 */
import { spawn, type ChildProcess } from 'node:child_process'

/**
 * Listen on 0.0.0.0:`port` in namespace `ns`; resolves with the process once it listens (rejects if
 * it exits first). `once`: answer the first connection with "ok" and exit; otherwise accept and
 * close connections until killed.
 */
export async function tcpListenerIn(
  ns: string,
  port: number,
  opts: { once?: boolean } = {},
): Promise<ChildProcess> {
  const serve = opts.once
    ? 'c, _ = s.accept(); c.sendall(b"ok"); c.close()'
    : 'while True:\n    c, _ = s.accept(); c.close()'
  const child = spawn(
    'ip',
    [
      'netns',
      'exec',
      ns,
      'python3',
      '-c',
      `import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", ${port})); s.listen(64); print("listening", flush=True)
${serve}`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  await new Promise<void>((resolve, reject) => {
    child.stdout?.once('data', () => resolve())
    child.once('exit', (code) => reject(new Error(`listener in ${ns} exited with ${code}`)))
  })
  return child
}
