#!/usr/bin/env bash
# etc/init.d/kvs: start (waits for /health), status, a write, stop (exit 0,
# pid file gone), start again and the write is there.
source "$(dirname "$0")/lib.sh"

port=$(free_port)
cat > "$WORK/config.yaml" <<YAML
node_id: "svc"
port: $port
data_dir: "$WORK/var/data"
YAML
cat > "$WORK/default" <<ENV
KVS_BIN="$KVS_BIN"
KVS_CONFIG="$WORK/config.yaml"
KVS_USER=""
KVS_WORKDIR="$WORK/var"
KVS_PIDFILE="$WORK/run/kvs.pid"
KVS_LOG="$WORK/log/kvs.log"
ENV
NODE_PORT[svc]=$port
NODE_LOG[svc]=$WORK/log/kvs.log
init() { KVS_DEFAULTS="$WORK/default" "$ROOT/etc/init.d/kvs" "$@"; }
# Let the trap stop the node whatever happens.
track() { [ -s "$WORK/run/kvs.pid" ] && NODE_PID[svc]=$(cat "$WORK/run/kvs.pid") || true; }

step "start waits for /health"
init start | grep -q 'ok (pid' || fail "start did not report ok"
track
is_healthy svc || fail "start returned before /health answered"
init start | grep -q 'already running' || fail "a second start did not notice the running node"

step "status"
rc=0; out=$(init status) || rc=$?
expect_eq "$rc" 0 "status exit code while running"
echo "$out" | grep -q 'running (pid' || fail "status: $out"

put svc svc/key '{"kept": true}'

step "stop: SIGTERM, exit 0, pid file removed"
pid=$(cat "$WORK/run/kvs.pid")
init stop | grep -q stopped || fail "stop did not report"
kill -0 "$pid" 2>/dev/null && fail "the node is still running after stop"
[ ! -e "$WORK/run/kvs.pid" ] || fail "pid file left behind"
unset 'NODE_PID[svc]'
grep -q 'LMDB closed' "$WORK/log/kvs.log" || fail "the log does not show a clean stop"
rc=0; init status > /dev/null || rc=$?
expect_eq "$rc" 3 "status exit code when stopped (LSB: not running)"

step "start again: the write is there; restart works"
init start > /dev/null || fail "second start failed"
track
expect_eq "$(get svc svc/key)" '{"kept": true}' "value after a stop and start"
init restart > /dev/null || fail "restart failed"
track
is_healthy svc || fail "not healthy after restart"
grep -c 'listening on' "$WORK/log/kvs.log" | grep -q '^3$' || fail "log was not appended across starts"

step "a broken config fails the start with the reason"
init stop > /dev/null; unset 'NODE_PID[svc]'
echo "port: nope" >> "$WORK/config.yaml"
rc=0; out=$(init start 2>&1) || rc=$?
[ "$rc" -ne 0 ] || fail "start succeeded with a broken config"
echo "$out" | grep -q 'port' || fail "the failure does not show the reason: $out"
pass
