#!/usr/bin/env bash
# Smoke test of the container deployment (Dockerfile + compose.yaml), end to end on this host:
#   1. docker-compose build (the initless image and the Redis image, FROM $INITLESS_BASE_IMAGE);
#      the image must hold the compiled JavaScript only: no tsx, no TypeScript, no compiler
#   2. Redis up; `initless doctor` (restore probe included) in a throwaway container with the
#      executor's container flags
#   3. executor + gateway up with only hello-node; wait for /readyz and for the bake
#   4. one cold request through the gateway: must answer hello-node's JSON; prints Server-Timing
#   4b. one asynchronous invocation: it completes, and its queue lives in queue-redis (appendfsync
#      always), not in the registry's Redis
#   5. docker-compose down -v, and removes what the executor left on the host (bridge, run dir)
# Exit code 0 only when every step passed. Needs root, Docker, docker-compose and curl.
#
# Usage: sudo bash scripts/compose-smoke.sh
# Environment (all optional):
#   INITLESS_PORT                gateway port on 127.0.0.1          (default 18080: a dev gateway has 8080)
#   INITLESS_COMPOSE_REDIS_PORT  Redis port on 127.0.0.1            (default 16380)
#   INITLESS_COMPOSE_QUEUE_REDIS_PORT  the queues' Redis port         (default 16382)
#   INITLESS_COMPOSE_REGISTRY_PORT  OCI registry port on 127.0.0.1   (default 15001)
#   INITLESS_COMPOSE_BRIDGE / INITLESS_COMPOSE_SUBNET                (default initless9, 10.219.0.0/16)
#   INITLESS_BASE_IMAGE          base image of every build          (default initless/debian:bookworm)
#   INITLESS_SMOKE_PROJECT       compose project name               (default initless-smoke)
#   INITLESS_BUILD_EXTRA_CA_CERTS  PEM text of extra CAs for the image build's npm downloads; when
#                                unset, the host's locally added CAs (/usr/local/share/ca-certificates)
#                                are passed, so a TLS-intercepting proxy the host trusts works
set -Eeuo pipefail
cd "$(dirname "$0")/.."

# Not compose.yaml's defaults: a compose deployment of initless may be running on this host.
export INITLESS_PORT=${INITLESS_PORT:-18080}
export INITLESS_COMPOSE_REDIS_PORT=${INITLESS_COMPOSE_REDIS_PORT:-16380}
export INITLESS_COMPOSE_QUEUE_REDIS_PORT=${INITLESS_COMPOSE_QUEUE_REDIS_PORT:-16382}
export INITLESS_ASYNC_REDIS_URL=redis://127.0.0.1:$INITLESS_COMPOSE_QUEUE_REDIS_PORT
export INITLESS_COMPOSE_REGISTRY_PORT=${INITLESS_COMPOSE_REGISTRY_PORT:-15001}
export INITLESS_COMPOSE_BRIDGE=${INITLESS_COMPOSE_BRIDGE:-initless9}
export INITLESS_COMPOSE_SUBNET=${INITLESS_COMPOSE_SUBNET:-10.219.0.0/16}
export INITLESS_COMPOSE_HOST_ID=${INITLESS_COMPOSE_HOST_ID:-compose-smoke}
export INITLESS_BASE_IMAGE=${INITLESS_BASE_IMAGE:-initless/debian:bookworm}
export INITLESS_IMAGE=${INITLESS_IMAGE:-initless/initless:local}
# The admin API's token: the compose file's deploy service deploys the functions through it.
export INITLESS_ADMIN_TOKEN=${INITLESS_ADMIN_TOKEN:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}
PROJECT=${INITLESS_SMOKE_PROJECT:-initless-smoke}
RUN_DIR=/run/$PROJECT
export INITLESS_COMPOSE_RUN_DIR=$RUN_DIR
if [ -z "${INITLESS_BUILD_EXTRA_CA_CERTS:-}" ] && compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  INITLESS_BUILD_EXTRA_CA_CERTS=$(cat /usr/local/share/ca-certificates/*.crt)
  export INITLESS_BUILD_EXTRA_CA_CERTS
fi

started=$(date +%s%3N)
step_started=$started
now_ms() { date +%s%3N; }
step() {
  step_started=$(now_ms)
  printf '==> %s\n' "$1"
}
done_step() { printf '    ok (%s ms)%s\n' "$(($(now_ms) - step_started))" "${1:+ — $1}"; }
fail() {
  printf '\ncompose-smoke: FAILED: %s\n' "$1" >&2
  exit 1
}
compose() { docker-compose -p "$PROJECT" -f compose.yaml "$@"; }

cleanup() {
  local code=$?
  trap - EXIT
  set +e
  if [ "$code" != 0 ]; then
    echo "---- container logs (last 60 lines each) ----" >&2
    compose logs --no-color --tail 60 >&2 2>/dev/null
  fi
  echo "==> cleanup"
  compose down -v --remove-orphans --timeout 30 >/dev/null 2>&1 ||
    echo "    warning: docker-compose down failed" >&2
  # What the executor leaves on the host: the bridge (host network namespace), its runc state dir
  # (empty after a clean stop), Docker containers of the boot runtime (none after a clean stop).
  if [ -d "$RUN_DIR/runc" ] && [ -n "$(ls -A "$RUN_DIR/runc" 2>/dev/null)" ]; then
    echo "    warning: runc containers left in $RUN_DIR/runc: $(ls "$RUN_DIR/runc" | tr '\n' ' ')" >&2
    for id in $(ls "$RUN_DIR/runc"); do runc --root "$RUN_DIR/runc" delete --force "$id" >/dev/null 2>&1; done
    [ "$code" = 0 ] && code=1
  fi
  rm -rf "$RUN_DIR"
  ip link del "$INITLESS_COMPOSE_BRIDGE" >/dev/null 2>&1
  left=$(docker ps -aq --filter "label=initless.host=$INITLESS_COMPOSE_HOST_ID")
  if [ -n "$left" ]; then
    echo "    warning: removing containers the executor left: $left" >&2
    # shellcheck disable=SC2086
    docker rm -f $left >/dev/null
  fi
  rm -rf "$FUNCTIONS_DIR" "$WORK"
  if [ "$code" = 0 ]; then
    printf '\ncompose-smoke: ok (%s ms in all)\n' "$(($(now_ms) - started))"
  fi
  exit "$code"
}
# ---------------------------------------------------------------------------------------------
step "preflight"
[ "$(id -u)" = 0 ] || fail "must run as root (the executor container manages host networking)"
for cmd in docker docker-compose curl ip; do
  command -v "$cmd" >/dev/null || fail "$cmd is not installed (run scripts/provision.sh)"
done
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer (run scripts/provision.sh)"
docker image inspect "$INITLESS_BASE_IMAGE" >/dev/null 2>&1 ||
  [ "$INITLESS_BASE_IMAGE" != initless/debian:bookworm ] ||
  fail "base image $INITLESS_BASE_IMAGE is missing (scripts/provision.sh builds it)"
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$INITLESS_PORT" "$INITLESS_COMPOSE_REDIS_PORT" "$INITLESS_COMPOSE_QUEUE_REDIS_PORT" "$INITLESS_COMPOSE_REGISTRY_PORT"; do
  port_busy "$port" && fail "127.0.0.1:$port is in use (set INITLESS_PORT / INITLESS_COMPOSE_REDIS_PORT / INITLESS_COMPOSE_QUEUE_REDIS_PORT / INITLESS_COMPOSE_REGISTRY_PORT)"
done
[ -z "$(compose ps -q 2>/dev/null)" ] || fail "compose project $PROJECT is already running"
ip link show "$INITLESS_COMPOSE_BRIDGE" >/dev/null 2>&1 &&
  fail "bridge $INITLESS_COMPOSE_BRIDGE already exists (set INITLESS_COMPOSE_BRIDGE)"

# From here on, whatever happens, cleanup() tears down what this run created.
FUNCTIONS_DIR=$(mktemp -d /tmp/initless-smoke-functions.XXXXXX)
export INITLESS_COMPOSE_FUNCTIONS=$FUNCTIONS_DIR
WORK=$(mktemp -d /tmp/initless-smoke.XXXXXX)
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
cp -r functions/hello-node "$FUNCTIONS_DIR/"
done_step "$(docker-compose version --short), port $INITLESS_PORT, redis $INITLESS_COMPOSE_REDIS_PORT, bridge $INITLESS_COMPOSE_BRIDGE"

# ---------------------------------------------------------------------------------------------
step "docker-compose build (BASE_IMAGE=$INITLESS_BASE_IMAGE)"
compose build >"$WORK/build.log" 2>&1 || {
  tail -n 40 "$WORK/build.log" >&2
  fail "docker-compose build failed (last lines above)"
}
done_step "$(docker image inspect -f '{{.Size}}' "$INITLESS_IMAGE" | awk '{printf "%d MB", $1/1e6}')"

# The final stage ships dist/ alone: the processes below can only run as compiled JavaScript.
step "image: compiled JavaScript only"
docker run --rm --entrypoint sh "$INITLESS_IMAGE" -c '
  cd /opt/initless || exit 1
  for f in dist/gateway/main.js dist/executor/main.js dist/cli/main.js; do
    [ -f "$f" ] || { echo "missing $f"; exit 1; }
  done
  for d in node_modules/tsx node_modules/typescript node_modules/esbuild; do
    [ ! -e "$d" ] || { echo "dev dependency present: $d"; exit 1; }
  done
  ts=$(find / -xdev -path /proc -prune -o -path /opt/initless/node_modules -prune -o \
    \( -name "*.ts" -o -name "*.test.*" \) -type f -print | grep -v "\.d\.ts$" | head -n 5)
  [ -z "$ts" ] || { echo "TypeScript sources or tests present: $ts"; exit 1; }
  for c in gcc cc tsc tsx; do
    ! command -v "$c" >/dev/null || { echo "compiler present: $(command -v "$c")"; exit 1; }
  done
' >"$WORK/contents.log" 2>&1 || { cat "$WORK/contents.log" >&2; fail "the image holds more than it should"; }
done_step "no tsx, no TypeScript sources, no compiler"

step "redis and queue-redis"
compose up -d redis queue-redis >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "redis did not start"; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q "$1")")" = healthy ]; }
for _ in $(seq 1 60); do
  healthy redis && healthy queue-redis && break
  sleep 0.5
done
healthy redis || fail "redis is not healthy"
healthy queue-redis || fail "queue-redis is not healthy"
queue_fsync=$(compose exec -T queue-redis redis-cli -p "$INITLESS_COMPOSE_QUEUE_REDIS_PORT" config get appendfsync | tail -1 | tr -d '\r')
[ "$queue_fsync" = always ] || fail "queue-redis runs appendfsync '$queue_fsync', not always"
done_step "127.0.0.1:$INITLESS_COMPOSE_REDIS_PORT; queues on 127.0.0.1:$INITLESS_COMPOSE_QUEUE_REDIS_PORT (appendfsync $queue_fsync)"

# The executor's container flags (compose.yaml), on a throwaway state volume; the run dir is the
# executor's, so its IP leases are shared with the executor's and addresses never collide.
step "initless doctor in a container"
mkdir -p "$RUN_DIR"
doctor_flags=(
  --rm --network host --cgroupns host --cap-add ALL --cap-drop SYS_RESOURCE
  --security-opt seccomp=unconfined --security-opt apparmor=unconfined
  -v /var/run/docker.sock:/var/run/docker.sock -v /sys/fs/cgroup:/sys/fs/cgroup
  -v /srv/initless -v "$RUN_DIR:/run/initless" --tmpfs /run/netns
  -e INITLESS_STATE_DIR=/srv/initless -e "INITLESS_REDIS_URL=redis://127.0.0.1:$INITLESS_COMPOSE_REDIS_PORT"
  -e "INITLESS_ASYNC_REDIS_URL=$INITLESS_ASYNC_REDIS_URL"
  -e "INITLESS_BRIDGE=$INITLESS_COMPOSE_BRIDGE" -e "INITLESS_SUBNET=$INITLESS_COMPOSE_SUBNET"
)
if ! docker run "${doctor_flags[@]}" "$INITLESS_IMAGE" doctor >"$WORK/doctor.log" 2>&1; then
  cat "$WORK/doctor.log" >&2
  fail "initless doctor failed inside the container"
fi
sed 's/^/    /' "$WORK/doctor.log"
done_step

step "executor + gateway up"
compose up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "docker-compose up failed"; }
done_step

step "gateway ready"
url=http://127.0.0.1:$INITLESS_PORT
for _ in $(seq 1 240); do
  curl -fsS -o /dev/null --max-time 2 "$url/readyz" 2>/dev/null && break
  sleep 0.5
done
curl -fsS --max-time 2 "$url/readyz" >"$WORK/readyz.json" 2>/dev/null || fail "$url/readyz did not answer 200 within 120 s"
done_step "$(cat "$WORK/readyz.json")"

step "gateway runs the compiled JavaScript"
healthz=$(curl -sS -o /dev/null --max-time 5 -w '%{http_code}' "$url/healthz") || fail "$url/healthz did not answer"
[ "$healthz" = 200 ] || fail "$url/healthz answered $healthz"
# `-o args` alone is refused by Docker 20.10 ("Couldn't find PID field in ps output").
docker top "$(compose ps -q gateway)" -o pid,args >"$WORK/gateway-top.txt" || fail "docker top failed"
grep -q 'node dist/gateway/main.js' "$WORK/gateway-top.txt" ||
  fail "the gateway container does not run node dist/gateway/main.js: $(cat "$WORK/gateway-top.txt")"
done_step "gateway /healthz: $healthz from node dist/gateway/main.js"

# Wait for the deploy service (build, bake, activate), so the request below is a cold start from
# the snapshot, not a 404 before the deploy.
step "hello-node deployed"
for _ in $(seq 1 300); do
  curl -fsS --max-time 2 -H "authorization: Bearer $INITLESS_ADMIN_TOKEN" "$url/admin/functions" 2>/dev/null |
    grep -q '"name":"hello-node"' && break
  sleep 1
done
curl -fsS --max-time 2 -H "authorization: Bearer $INITLESS_ADMIN_TOKEN" "$url/admin/functions" 2>/dev/null |
  grep -q '"name":"hello-node"' || {
  compose logs --no-color deploy >&2 || true
  fail "the deploy service did not deploy hello-node within 300 s"
}
# The deploy pushed the image to compose's registry (INITLESS_IMAGE_REGISTRY).
curl -fsS --max-time 5 "http://127.0.0.1:$INITLESS_COMPOSE_REGISTRY_PORT/v2/initless/fn-hello-node/tags/list" \
  >"$WORK/tags.json" 2>/dev/null || fail "the registry holds no image of hello-node"
done_step "pushed to the registry: $(cat "$WORK/tags.json")"

step "cold request through the gateway"
code=$(curl -sS -o "$WORK/body" -D "$WORK/headers" --max-time 60 \
  -w '%{http_code} %{time_total}' "$url/fn/hello-node/") || fail "the request failed"
echo "    HTTP ${code% *} in ${code#* } s"
echo "    body: $(cat "$WORK/body")"
timing=$(grep -i '^server-timing:' "$WORK/headers" | tr -d '\r' || true)
echo "    ${timing:-Server-Timing: (none)}"
[ "${code% *}" = 200 ] || fail "expected HTTP 200, got ${code% *}"
grep -q '"message":"hello from node"' "$WORK/body" || fail "unexpected body: $(cat "$WORK/body")"
[ -n "$timing" ] || fail "no Server-Timing header"
warm=$(curl -sS -o /dev/null --max-time 10 -w '%{http_code} %{time_total}' "$url/fn/hello-node/") ||
  fail "the second request failed"
done_step "warm request: HTTP ${warm% *} in ${warm#* } s"

step "asynchronous invocation through queue-redis"
accepted=$(curl -sS -o "$WORK/async.json" -D "$WORK/async-headers" --max-time 10 -w '%{http_code}' \
  -X POST -H 'content-type: text/plain' --data-binary 'async through compose' \
  "$url/async-function/hello-node/echo") || fail "the asynchronous request failed"
[ "$accepted" = 202 ] || fail "expected 202 for the asynchronous request, got $accepted: $(cat "$WORK/async.json")"
id=$(grep -i '^x-invocation-id:' "$WORK/async-headers" | tr -d '\r' | cut -d' ' -f2)
[ -n "$id" ] || fail "no X-Invocation-Id"
state= record=
for _ in $(seq 1 120); do
  record=$(curl -sS --max-time 5 "$url/invocations/$id")
  state=$(printf '%s' "$record" | grep -o '"state":"[a-z]*"' | head -1 | cut -d'"' -f4)
  [ "$state" = succeeded ] && break
  sleep 0.5
done
[ "$state" = succeeded ] || fail "invocation $id is '$state', not succeeded, after 60 s: ${record:0:2000}"
# The echo's body, base64 as the invocation record keeps it.
printf '%s' "$record" | grep -q '"body":"YXN5bmMgdGhyb3VnaCBjb21wb3Nl"' ||
  fail "invocation $id succeeded without echoing the request body"
keys() { compose exec -T "$1" redis-cli -p "$2" --scan --pattern '{initless}:*' | tr -d '\r' | grep -c . || true; }
in_queue=$(keys queue-redis "$INITLESS_COMPOSE_QUEUE_REDIS_PORT")
in_registry=$(keys redis "$INITLESS_COMPOSE_REDIS_PORT")
[ "$in_queue" -gt 0 ] || fail "no {initless} key in queue-redis"
[ "$in_registry" = 0 ] || fail "$in_registry {initless} keys in the registry's Redis"
done_step "$id succeeded; {initless} keys: $in_queue in queue-redis, none in redis"
