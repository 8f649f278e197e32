import { open, type FileHandle } from 'node:fs/promises'

/**
 * Open an instance's output log for appending; its fd becomes the container's stdout and stderr.
 * The caller closes our copy once runc has handed the fd on.
 */
export function openOutput(path: string): Promise<FileHandle> {
  return open(path, 'a', 0o600)
}
