/**
 * The error catalogue. Every error initless raises on purpose carries a stable `code`
 * (`ERR_<AREA>_<THING>`); callers match on `err.code`, never on `instanceof` or message text.
 * `status` is the HTTP status the gateway answers with; `retryable` tells the restore queue whether
 * a failed job may be tried again (false becomes BullMQ's UnrecoverableError).
 */
export interface ErrorSpec {
  readonly status: number
  readonly title: string
  readonly retryable: boolean
}

export const ERRORS = {
  // Configuration and manifests
  ERR_CONFIG_INVALID: { status: 500, title: 'Invalid configuration', retryable: false },
  ERR_MANIFEST_INVALID: { status: 500, title: 'Invalid function manifest', retryable: false },
  ERR_STATE_DIR_IN_USE: { status: 500, title: 'State dir in use by another executor', retryable: false },
  ERR_SUBNET_IN_USE: { status: 500, title: 'Instance subnet claimed by another host', retryable: false },
  ERR_NETWORK_POLICY: { status: 500, title: 'Network policy could not be applied', retryable: false },
  // Functions and images
  ERR_FUNCTION_NOT_FOUND: { status: 404, title: 'Function not found', retryable: false },
  ERR_FUNCTION_NAME_INVALID: { status: 404, title: 'Invalid function name', retryable: false },
  ERR_IMAGE_BUILD_FAILED: { status: 500, title: 'Image build failed', retryable: false },
  ERR_IMAGE_NOT_FOUND: { status: 500, title: 'Function image not built', retryable: false },
  ERR_IMAGE_PUSH_FAILED: { status: 500, title: 'Image push to the registry failed', retryable: false },
  ERR_IMAGE_PULL_FAILED: { status: 500, title: 'Image pull from the registry failed', retryable: false },
  // Deploys, versions and rollbacks (function registry)
  ERR_DEPLOY_CONTEXT_INVALID: { status: 400, title: 'Invalid build context', retryable: false },
  ERR_DEPLOY_FAILED: { status: 422, title: 'Deploy failed', retryable: false },
  ERR_VERSION_NOT_FOUND: { status: 404, title: 'Function version not found', retryable: false },
  ERR_CHANGE_IN_PROGRESS: {
    status: 409,
    title: 'Another change of the function is running',
    retryable: true,
  },
  // Snapshots
  ERR_SNAPSHOT_NOT_FOUND: { status: 503, title: 'No valid snapshot', retryable: false },
  ERR_SNAPSHOT_CORRUPT: { status: 503, title: 'Snapshot is corrupt', retryable: false },
  ERR_BAKE_NOT_READY: { status: 500, title: 'Function never became ready', retryable: false },
  ERR_BAKE_WARMUP_FAILED: { status: 500, title: 'Function failed during warm-up', retryable: false },
  ERR_BAKE_CHECKPOINT_FAILED: { status: 500, title: 'Checkpoint failed', retryable: false },
  // Instances and sandboxes
  ERR_SANDBOX_SETUP_FAILED: { status: 503, title: 'Sandbox setup failed', retryable: true },
  ERR_RESTORE_FAILED: { status: 502, title: 'Restore failed', retryable: true },
  ERR_INSTANCE_NOT_READY: { status: 502, title: 'Instance did not become ready', retryable: true },
  ERR_INSTANCE_DIED: { status: 502, title: 'Instance died', retryable: true },
  // Commands the executor runs (runc, criu, ip, mount)
  ERR_COMMAND_FAILED: { status: 500, title: 'Command failed', retryable: true },
  ERR_COMMAND_TIMEOUT: { status: 500, title: 'Command timed out', retryable: true },
  // `initless service`: systemd units
  ERR_SERVICE_NO_SYSTEMD: { status: 500, title: 'systemd is not running on this host', retryable: false },
  ERR_SERVICE_UNIT_CONFLICT: {
    status: 500,
    title: 'A unit initless did not write is in the way',
    retryable: false,
  },
  ERR_SERVICE_FILE_FAILED: { status: 500, title: 'Unit or env file not read or written', retryable: false },
  // Gateway
  ERR_GATEWAY_BODY_TOO_LARGE: { status: 413, title: 'Request body too large', retryable: false },
  ERR_GATEWAY_NO_CAPACITY: { status: 503, title: 'No capacity', retryable: true },
  ERR_GATEWAY_TIMEOUT: { status: 504, title: 'Timed out waiting for an instance', retryable: true },
  ERR_GATEWAY_UPSTREAM_FAILED: { status: 502, title: 'Upstream failed', retryable: true },
  ERR_GATEWAY_UNAUTHORIZED: { status: 401, title: 'Unauthorized', retryable: false },
  ERR_GATEWAY_NOT_FOUND: { status: 404, title: 'Not found', retryable: false },
  ERR_GATEWAY_BAD_REQUEST: { status: 400, title: 'Bad request', retryable: false },
  ERR_GATEWAY_METHOD_NOT_ALLOWED: { status: 405, title: 'Method not allowed', retryable: false },
  ERR_GATEWAY_REQUEST_TIMEOUT: { status: 408, title: 'Request timeout', retryable: false },
  ERR_GATEWAY_EXPECTATION_FAILED: { status: 417, title: 'Expectation failed', retryable: false },
  ERR_GATEWAY_HEADERS_TOO_LARGE: { status: 431, title: 'Request header fields too large', retryable: false },
  ERR_GATEWAY_TOO_MANY_CONNECTIONS: { status: 429, title: 'Too many connections', retryable: true },
  // 499 (nginx's "client closed request"): logged and counted, never seen by the gone client.
  ERR_GATEWAY_CLIENT_CLOSED: { status: 499, title: 'Client closed request', retryable: false },
  // Invocation keys and rate limits (docs/security.md)
  ERR_KEY_REQUIRED: { status: 401, title: 'Invocation key required', retryable: false },
  ERR_KEY_INVALID: { status: 401, title: 'Invocation key not valid', retryable: false },
  ERR_KEY_NOT_FOUND: { status: 404, title: 'Key not found', retryable: false },
  ERR_RATE_LIMITED: { status: 429, title: 'Rate limit exceeded', retryable: true },
  // Asynchronous invocations
  ERR_ASYNC_QUEUE_FULL: { status: 503, title: 'Asynchronous queue full', retryable: true },
  ERR_ASYNC_UNAVAILABLE: { status: 503, title: 'Asynchronous queue unavailable', retryable: true },
  ERR_ASYNC_CALLBACK_REFUSED: { status: 400, title: 'Callback URL refused', retryable: false },
  ERR_ASYNC_IDEMPOTENCY_CONFLICT: {
    status: 422,
    title: 'Idempotency key reused for another request',
    retryable: false,
  },
  ERR_INVOCATION_NOT_FOUND: { status: 404, title: 'Invocation not found', retryable: false },
  // Secrets (docs/security.md#secrets)
  ERR_SECRET_NAME_INVALID: { status: 400, title: 'Invalid secret scope or name', retryable: false },
  ERR_SECRET_VALUE_INVALID: { status: 400, title: 'Invalid secret value', retryable: false },
  ERR_SECRET_TOO_LARGE: { status: 413, title: 'Secret value too large', retryable: false },
  ERR_SECRET_NOT_FOUND: { status: 404, title: 'Secret not found', retryable: false },
  ERR_SECRET_MISSING: { status: 503, title: 'A declared secret has no value', retryable: false },
  ERR_SECRET_KEY: { status: 500, title: 'Secret cannot be opened with this key', retryable: false },
  // Internal
  ERR_SHUTDOWN_TIMEOUT: { status: 500, title: 'Shutdown deadline passed', retryable: false },
  ERR_INTERNAL: { status: 500, title: 'Internal error', retryable: false },
} as const satisfies Record<string, ErrorSpec>

export type ErrorCode = keyof typeof ERRORS

export class InitlessError extends Error {
  readonly code: ErrorCode
  readonly status: number
  readonly retryable: boolean
  /** Extra fields for logs and problem+json bodies (never secrets). */
  readonly details: Readonly<Record<string, unknown>>

  constructor(
    code: ErrorCode,
    message: string,
    options?: { cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'InitlessError'
    this.code = code
    this.status = ERRORS[code].status
    this.retryable = ERRORS[code].retryable
    this.details = Object.freeze({ ...options?.details })
  }
}

/** Narrow an unknown thrown value to one of ours, by code. */
export function isInitlessError(err: unknown, code?: ErrorCode): err is InitlessError {
  if (typeof err !== 'object' || err === null) return false
  const c = (err as { code?: unknown }).code
  if (typeof c !== 'string' || !(c in ERRORS)) return false
  return code === undefined || c === code
}

/** `code` when the catalogue has it, else `fallback`: for a code that crossed a process boundary. */
export function cataloguedCode(code: string, fallback: ErrorCode): ErrorCode {
  return code in ERRORS ? (code as ErrorCode) : fallback
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
