/**
 * Where the executor's C programs live once built (scripts/build-native.sh, run by provisioning
 * and the image build): the sandbox helper and the self-test's probe server, with a build-id file
 * naming the sources they came from. Nothing here compiles or reads C sources at run time.
 */
import { readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'

/** The install directory of scripts/build-native.sh's default prefix. */
export const NATIVE_DIR = '/usr/local/lib/initless'
export const HELPER_BINARY = 'initless-sandbox-helper'
export const PROBE_SERVER_BINARY = 'initless-probe-server'

/** `dir/name` when it is a file, else undefined. */
function installed(dir: string, name: string): string | undefined {
  const path = join(dir, name)
  try {
    return statSync(path).isFile() ? path : undefined
  } catch {
    return undefined
  }
}

/** The installed sandbox helper, or undefined when this host has none. */
export function installedHelperPath(dir = NATIVE_DIR): string | undefined {
  return installed(dir, HELPER_BINARY)
}

/** The installed probe server of the restore self-test, or undefined. */
export function installedProbeServer(dir = NATIVE_DIR): string | undefined {
  return installed(dir, PROBE_SERVER_BINARY)
}

/** The build id of the programs installed beside `program`, if recorded. */
export function nativeBuildId(program: string): string | undefined {
  try {
    return readFileSync(join(program, '..', 'build-id'), 'utf8').trim() || undefined
  } catch {
    return undefined
  }
}
