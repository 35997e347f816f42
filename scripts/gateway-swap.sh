#!/usr/bin/env bash
# Deploy or roll back the gateway binary on a host (VM, bare metal) without dropping a request:
# Pingora's graceful upgrade hands the listening sockets from the running process to the new
# one, and the old one drains. Containers roll back by redeploying the previous image tag
# (docs/runbooks.md); this is the same move for a binary.
#
#   scripts/gateway-swap.sh start             start DIR/gateway
#   scripts/gateway-swap.sh upgrade NEW_BIN   check NEW_BIN against the config, hand over to it;
#                                             the running binary becomes DIR/gateway.previous
#   scripts/gateway-swap.sh rollback          hand back to DIR/gateway.previous
#   scripts/gateway-swap.sh stop              SIGTERM: drain and exit
#
# Environment: GATEWAY_DIR (default /opt/gatehouse; holds gateway, gateway.previous, the pid
# file, the upgrade socket and gateway.log), GATEWAY_CONFIG (default
# /etc/gatehouse/config/gateway.toml), GATEWAY_ADMIN_LISTEN (default 127.0.0.1:9090), APP_ENV and the
# gateway's own variables. Exits non-zero, with the running process untouched, when the new
# binary rejects the configuration or does not come up.
set -euo pipefail

dir=${GATEWAY_DIR:-/opt/gatehouse}
config=${GATEWAY_CONFIG:-/etc/gatehouse/config/gateway.toml}
admin=${GATEWAY_ADMIN_LISTEN:-127.0.0.1:9090}
export GATEWAY_PID_FILE=${GATEWAY_PID_FILE:-$dir/gateway.pid}
export GATEWAY_UPGRADE_SOCK=${GATEWAY_UPGRADE_SOCK:-$dir/upgrade.sock}
log=$dir/gateway.log

say() { printf 'gateway-swap: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

running_pid() {
  local pid
  pid=$(cat "$GATEWAY_PID_FILE" 2>/dev/null) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

healthy() { "$dir/gateway" healthcheck --admin "$admin" >/dev/null 2>&1; }

# launch BIN [--upgrade]: detached from this shell, logging to DIR/gateway.log.
launch() {
  setsid "$1" run --config "$config" "${@:2}" >>"$log" 2>&1 </dev/null &
  echo $!
}

wait_exit() {
  local pid=$1 _
  for _ in $(seq 600); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

# hand_over BIN: start BIN with --upgrade, then tell the running process to pass its sockets.
hand_over() {
  local bin=$1 old new started
  old=$(running_pid) || die "no running gateway (pid file $GATEWAY_PID_FILE): use start"
  "$bin" check --config "$config" >/dev/null || die "$bin rejects $config; nothing changed"
  started=$(date +%s)
  new=$(launch "$bin" --upgrade)
  # The new process waits on the upgrade socket for the listeners; give it a moment to get there.
  sleep 0.5
  kill -0 "$new" 2>/dev/null || die "$bin exited at once (see $log); the old process keeps serving"
  kill -QUIT "$old"
  wait_exit "$old" || die "pid $old did not finish draining within 60 s"
  kill -0 "$new" 2>/dev/null || die "$bin died during the hand-over (see $log)"
  local _
  for _ in $(seq 100); do
    healthy && break
    sleep 0.1
  done
  healthy || die "$bin took over but its admin listener does not answer (see $log)"
  echo "$new" >"$GATEWAY_PID_FILE"
  say "pid $new serves now (was $old), hand-over took $(($(date +%s) - started)) s"
}

case ${1:-} in
  start)
    [[ -x $dir/gateway ]] || die "no binary at $dir/gateway"
    if pid=$(running_pid); then die "already running as pid $pid"; fi
    "$dir/gateway" check --config "$config" >/dev/null || die "$dir/gateway rejects $config"
    pid=$(launch "$dir/gateway")
    for _ in $(seq 100); do
      healthy && break
      sleep 0.1
    done
    healthy || die "the gateway did not come up (see $log)"
    echo "$pid" >"$GATEWAY_PID_FILE"
    say "started pid $pid"
    ;;
  upgrade)
    new=${2:?usage: gateway-swap.sh upgrade NEW_BINARY}
    [[ -x $new ]] || die "$new is not an executable"
    install -m 0755 "$new" "$dir/gateway.next"
    hand_over "$dir/gateway.next"
    mv -f "$dir/gateway" "$dir/gateway.previous"
    mv -f "$dir/gateway.next" "$dir/gateway"
    say "upgraded; roll back with: gateway-swap.sh rollback"
    ;;
  rollback)
    [[ -x $dir/gateway.previous ]] || die "no previous binary ($dir/gateway.previous)"
    hand_over "$dir/gateway.previous"
    mv -f "$dir/gateway" "$dir/gateway.next"
    mv -f "$dir/gateway.previous" "$dir/gateway"
    mv -f "$dir/gateway.next" "$dir/gateway.previous"
    say "rolled back"
    ;;
  stop)
    pid=$(running_pid) || die "not running"
    kill -TERM "$pid"
    wait_exit "$pid" || die "pid $pid did not stop within 60 s"
    rm -f "$GATEWAY_PID_FILE"
    say "stopped"
    ;;
  *)
    sed -n '2,19p' "$0" >&2
    exit 2
    ;;
esac
