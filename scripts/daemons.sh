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
    setsid nohup dockerd >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
  fi
}

# start_redis PORT: Debian's redis-server.service serves port 6379 only (its /etc/redis/redis.conf);
# any other port gets a Redis of initless's own, data in $STATE_DIR/redis. Its AOF is fsynced before
# every reply: a 202 for an asynchronous invocation must survive a crash (docs/async.md).
start_redis() {
  if has_systemd && [ "$1" = 6379 ]; then systemctl enable --now redis-server; else
    mkdir -p "$STATE_DIR/redis"
    redis-server --port "$1" --bind 127.0.0.1 --daemonize yes --dir "$STATE_DIR/redis" \
      --logfile "$LOG_DIR/redis.log" --pidfile "/run/initless-redis-$1.pid" \
      --appendonly yes --appendfsync always --save ''
  fi
}
