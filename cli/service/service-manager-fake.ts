/** A recording ServiceManager for tests: no systemd needed. */
import { InitlessError } from '../../shared/errors.ts'
import type { ServiceManager } from './service-manager.ts'

export interface FakeServiceManager extends ServiceManager {
  /** Every call, as the systemctl command line it stands for (`enable --now a.service b.service`). */
  readonly calls: string[]
}

/** `booted`: whether systemd "runs" the host; `failOn`: a verb (`enable`...) that fails like systemctl. */
export function createFakeServiceManager(
  opts: { booted?: boolean; failOn?: string } = {},
): FakeServiceManager {
  const calls: string[] = []
  const call = async (line: string) => {
    calls.push(line)
    if (opts.failOn && line.split(' ')[0] === opts.failOn)
      throw new InitlessError('ERR_COMMAND_FAILED', `systemctl ${line}: exit 1\nFailed (fake)`)
  }
  return {
    calls,
    isBooted: async () => opts.booted ?? true,
    reload: () => call('daemon-reload'),
    enable: (units, { now }) => call(['enable', ...(now ? ['--now'] : []), ...units].join(' ')),
    disable: (units) => call(['disable', '--now', ...units].join(' ')),
  }
}
