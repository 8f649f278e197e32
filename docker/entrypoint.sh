#!/bin/sh
# Entry point of the initless image (run under tini, which reaps the restored instances that
# re-parent to PID 1 and forwards signals).
#   gateway              node dist/gateway/main.js
#   executor             node dist/executor/main.js
#   healthcheck          the image's HEALTHCHECK: gateway -> GET /healthz answers 200;
#                        executor -> its heartbeat in Redis is fresh; anything else -> healthy
#   anything else        the initless CLI: node bin/initless.mjs "$@" (doctor, build, bake, ...)
set -eu
APP=/opt/initless
ROLE_FILE=/run/initless-role
cd "$APP"

# CRIU needs /proc/sys writable (`criu check` fails on a read-only kernel/ns_last_pid), which Docker
# mounts read-only unless the container is privileged or run with `--security-opt
# systempaths=unconfined` (a docker CLI option: docker-compose 1.29 cannot pass it). With
# CAP_SYS_ADMIN (which the executor has anyway) the read-only bind can simply be made writable.
writable_proc_sys() {
  if [ ! -w /proc/sys/kernel/ns_last_pid ] && mount -o remount,bind,rw /proc/sys 2>/dev/null; then
    echo "initless entrypoint: /proc/sys remounted read-write (CRIU needs it)" >&2
  fi
  return 0
}

case "${1:-}" in
  gateway | healthcheck) ;;
  *) writable_proc_sys ;; # the executor and CLI commands (doctor, bake, ...)
esac

case "${1:-}" in
  gateway | executor)
    role=$1
    shift
    echo "$role" >"$ROLE_FILE"
    exec node "dist/$role/main.js" "$@"
    ;;
  healthcheck)
    role=$(cat "$ROLE_FILE" 2>/dev/null || echo cli)
    case "$role" in
      gateway)
        exec node -e '
          const host = process.env.INITLESS_GATEWAY_HOST || "127.0.0.1"
          const port = process.env.INITLESS_GATEWAY_PORT || "8080"
          const h = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "[::1]" : host.includes(":") ? `[${host}]` : host
          fetch(`http://${h}:${port}/healthz`, { signal: AbortSignal.timeout(5000) })
            .then((r) => { if (!r.ok) throw new Error(`HTTP ${r.status}`); console.log("gateway healthy") })
            .catch((e) => { console.log(`gateway unhealthy: ${e.message}`); process.exit(1) })'
        ;;
      executor)
        # Fresh = newer than three heartbeat intervals, the gateway's own /readyz rule.
        exec node --input-type=module -e '
          import { loadExecutorConfig } from "./dist/executor/config.js"
          import { HEARTBEAT_INTERVAL_MS } from "./dist/shared/contracts.js"
          import { createSilentLogger } from "./dist/shared/logger.js"
          import { createRedis } from "./dist/shared/redis.js"
          import { createRedisRegistry } from "./dist/shared/registry.js"
          const config = loadExecutorConfig(process.env)
          const redis = createRedis(config.INITLESS_REDIS_URL, { name: "initless-healthcheck" })
          redis.options.retryStrategy = () => null
          redis.on("error", () => undefined)
          let code = 1
          try {
            const registry = createRedisRegistry({ redis, logger: createSilentLogger(), prefix: config.INITLESS_KEY_PREFIX })
            const mine = (await registry.executors()).find((e) => e.hostId === config.hostId)
            const age = mine ? Date.now() - mine.at : Infinity
            code = age <= 3 * HEARTBEAT_INTERVAL_MS ? 0 : 1
            console.log(code ? `executor unhealthy: last heartbeat of ${config.hostId} ${mine ? `${age} ms ago` : "never seen"}` : `executor healthy (heartbeat ${age} ms ago)`)
          } catch (err) {
            console.log(`executor unhealthy: ${err.message}`)
          }
          redis.disconnect()
          process.exit(code)'
        ;;
      *) echo "healthy (no long-running role)" ;;
    esac
    ;;
  *) exec node bin/initless.mjs "$@" ;;
esac
