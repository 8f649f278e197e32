# Starting the daemons initless needs, sourced by provision.sh: through systemd where systemd runs
# the host, else as background processes logging to $LOG_DIR. Uses $STATE_DIR and $LOG_DIR.
# scripts/daemons.test.ts runs these functions with fake systemctl, dockerd and redis-server.

# systemd runs this host (sd_booted(3)); INITLESS_SYSTEMD_MARKER stands in for the marker in tests.
has_systemd() { [ -d "${INITLESS_SYSTEMD_MARKER:-/run/systemd/system}" ]; }

wait_for() { # wait_for SECONDS CMD...
  local deadline=$(($(date +%s) + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# without_inherited_fds CMD...: run CMD with descriptors 3-9 closed. A daemon keeps what it inherits
# for its whole life: run as `flock LOCK provision.sh`, provisioning hands the lock's descriptor to
# its children, and a daemon started with it would hold that lock until it stops.
without_inherited_fds() { "$@" 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; }

# Make a running Docker engine read /etc/docker/daemon.json again: systemd restarts it; without
# systemd it is stopped here and start_docker starts it.
restart_docker() {
  if has_systemd; then systemctl restart docker; else
    pkill -x dockerd || true
    wait_for 30 bash -c '! pgrep -x dockerd'
  fi
}

# Enabled too, so that it is back after a reboot.
start_docker() {
  if has_systemd; then systemctl enable --now docker; else
    without_inherited_fds setsid nohup dockerd >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
  fi
}

# start_redis PORT: Debian's redis-server.service serves port 6379 only (its /etc/redis/redis.conf);
# any other port gets a Redis of initless's own, data in $STATE_DIR/redis. AOF with everysec: every
# acknowledged write has reached the kernel (a killed redis-server loses nothing); `always` would put
# an fsync into every registry write of a cold start (docs/async.md, durability).
start_redis() {
  if has_systemd && [ "$1" = 6379 ]; then systemctl enable --now redis-server; else
    mkdir -p "$STATE_DIR/redis"
    without_inherited_fds redis-server --port "$1" --bind 127.0.0.1 --daemonize yes --dir "$STATE_DIR/redis" \
      --logfile "$LOG_DIR/redis.log" --pidfile "/run/initless-redis-$1.pid" \
      --appendonly yes --save ''
  fi
}

# The Redis of the asynchronous invocation queues (docs/async.md, durability): its AOF is fsynced
# before every reply (appendfsync always), so a 202 survives a crash of redis-server, of the
# operating system or of the power, as long as the disk honours fsync. A Redis of its own: the
# registry's Redis stays on everysec (it writes several times per cold start).
# On a systemd host it is an instance of Debian's redis-server@.service, which reads
# /etc/redis/redis-<instance>.conf, runs as the redis user and restarts at boot.
QUEUE_REDIS_INSTANCE=initless-queue

# queue_redis_conf PORT DIR: the queue Redis's configuration file, on stdout. Under systemd the
# template's PIDFile and the journal (logfile "") apply; without it the start passes its own.
queue_redis_conf() {
  printf '%s\n' \
    '# Written by initless (scripts/provision.sh); rewritten on every provisioning run.' \
    '# The Redis of the asynchronous invocation queues: docs/async.md, "Redis persistence".' \
    "port $1" \
    'bind 127.0.0.1' \
    "dir $2" \
    'appendonly yes' \
    'appendfsync always' \
    'save ""'
  if has_systemd; then
    printf '%s\n' "pidfile /run/redis-$QUEUE_REDIS_INSTANCE/redis-server.pid" 'logfile ""'
  fi
}

# start_queue_redis CONF: start the queue Redis from its configuration file (systemd: CONF must be
# /etc/redis/redis-$QUEUE_REDIS_INSTANCE.conf, the file the template reads).
start_queue_redis() {
  if has_systemd; then systemctl enable --now "redis-server@$QUEUE_REDIS_INSTANCE"; else
    without_inherited_fds redis-server "$1" --daemonize yes --logfile "$LOG_DIR/queue-redis.log" \
      --pidfile /run/initless-queue-redis.pid
  fi
}

# start_registry CONFIG: Debian's docker-registry (the CNCF Distribution registry) serving CONFIG.
# Through systemd with a drop-in pointing the package's unit at CONFIG (the package's own config
# listens on every interface); else in the background as the package's docker-registry user,
# replacing one started here before (its configuration changed).
start_registry() {
  if has_systemd; then
    local dropin=${INITLESS_SYSTEMD_DIR:-/etc/systemd/system}/docker-registry.service.d
    mkdir -p "$dropin"
    printf '[Service]\nExecStart=\nExecStart=/usr/bin/docker-registry serve %s\n' "$1" >"$dropin/initless.conf"
    systemctl daemon-reload
    systemctl enable docker-registry
    systemctl restart docker-registry
  else
    local pidfile=${INITLESS_REGISTRY_PIDFILE:-/run/initless-registry.pid} old
    old=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$old" ] && kill "$old" 2>/dev/null; then wait_for 10 bash -c "! kill -0 $old"; fi
    without_inherited_fds setsid nohup setpriv --reuid=docker-registry --regid=docker-registry --init-groups \
      docker-registry serve "$1" >>"$LOG_DIR/registry.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
  fi
}
