/**
 * The port to the host's service manager: the few systemd operations installing initless's units
 * needs. The adapter is systemctl.ts; service-manager-fake.ts records calls for tests.
 */
export interface ServiceManager {
  /** Whether systemd runs this host (as sd_booted(3) tells: /run/systemd/system exists). */
  isBooted(): Promise<boolean>
  /** Make systemd read the unit files again. */
  reload(): Promise<void>
  /** Enable `units` at boot; with `now`, also start them (in their dependency order). */
  enable(units: readonly string[], opts: { readonly now: boolean }): Promise<void>
  /** Stop `units` and disable them at boot. */
  disable(units: readonly string[]): Promise<void>
}
