/** File tampering for the snapshot-integrity tests. */
import { open } from 'node:fs/promises'

/** Overwrite the byte in the middle of `file` with its complement: same size, other contents. */
export async function flipMiddleByte(file: string): Promise<void> {
  const fh = await open(file, 'r+')
  try {
    const { size } = await fh.stat()
    const b = Buffer.alloc(1)
    await fh.read(b, 0, 1, Math.floor(size / 2))
    b[0] = b[0]! ^ 0xff
    await fh.write(b, 0, 1, Math.floor(size / 2))
  } finally {
    await fh.close()
  }
}
