/**
 * The command line that starts one of initless's long-running processes. The one place that knows
 * how a process is launched outside `initless up`: the service units and the commands printed for
 * hosts without systemd both come from here.
 */
import { join } from 'node:path'
import { entryPath, type ProcessName } from '../launcher.ts'

/**
 * argv of `proc`: the compiled `dist/<proc>/main.js` when the install has one (`npm run build`),
 * else the TypeScript source through tsx's loader, as `initless up` runs it. `--import tsx` is
 * resolved from the working directory, which must be `root`.
 */
export function processCommand(
  proc: Exclude<ProcessName, 'cli'>,
  root: string,
  deps: { readonly node: string; readonly exists: (path: string) => boolean },
): string[] {
  const built = entryPath(root, proc)
  if (deps.exists(built)) return [deps.node, built]
  return [deps.node, '--import', 'tsx', join(root, proc, 'main.ts')]
}
