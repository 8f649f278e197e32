/**
 * The ServiceManager on a systemd host: the one file that runs `systemctl`. A failed command
 * throws ERR_COMMAND_FAILED with systemctl's own message.
 */
import { access } from 'node:fs/promises'
import { runCommand, type CommandRunner } from '../../executor/adapters/exec.ts'
import type { ServiceManager } from './service-manager.ts'

/** systemd creates this directory at boot; its presence is how sd_booted(3) and provision.sh tell. */
export const SYSTEMD_MARKER = '/run/systemd/system'

export function createSystemctl(
  deps: { readonly run?: CommandRunner; readonly marker?: string } = {},
): ServiceManager {
  const run = deps.run ?? runCommand
  // enable --now waits for the units to start: Redis reports readiness, the others once exec'd.
  const systemctl = (...args: string[]) =>
    run('systemctl', args, { timeoutMs: 120_000 }).then(() => undefined)
  return {
    isBooted: () =>
      access(deps.marker ?? SYSTEMD_MARKER).then(
        () => true,
        () => false,
      ),
    reload: () => systemctl('daemon-reload'),
    enable: (units, opts) => systemctl('enable', ...(opts.now ? ['--now'] : []), '--', ...units),
    disable: (units) => systemctl('disable', '--now', '--', ...units),
  }
}
