#!/usr/bin/env bash
# SIGHUP never kills the node: it reads the configuration again, applies
# log_level at once, names the keys that wait for a restart, and keeps the
# running configuration when the file no longer loads.
source "$(dirname "$0")/lib.sh"

new_node n1
cat > "$WORK/n1.yaml" << YAML
node_id: "n1"
port: ${NODE_PORT[n1]}
data_dir: "${NODE_DIR[n1]}"
log_level: "info"
YAML
(cd "$WORK" && exec "$KVS_BIN" "$WORK/n1.yaml" >> "${NODE_LOG[n1]}" 2>&1) &
NODE_PID[n1]=$!
wait_healthy n1
pid=$(pid_of n1)

step "SIGHUP with nothing changed"
kill -HUP "$pid"
wait_until 5 "the reload is logged" grep -q "SIGHUP: configuration reloaded, nothing changed" "${NODE_LOG[n1]}"
is_healthy n1 || fail "the node stopped answering after SIGHUP"

step "log_level changes live; other keys wait for a restart"
curl -s "$(url n1 /no/such/endpoint)" > /dev/null
grep -q "/no/such/endpoint" "${NODE_LOG[n1]}" && fail "a debug line was logged at level info"
sed -i 's/log_level: "info"/log_level: "debug"/; s/node_id: "n1"/node_id: "renamed"/' "$WORK/n1.yaml"
echo "sync_interval: 7" >> "$WORK/n1.yaml"
kill -HUP "$pid"
wait_until 5 "log_level applied" grep -q "SIGHUP: log_level is now debug" "${NODE_LOG[n1]}"
grep -q "SIGHUP: node_id, sync_interval changed; taking effect at the next restart" "${NODE_LOG[n1]}" \
  || fail "the keys waiting for a restart are not named: $(grep SIGHUP "${NODE_LOG[n1]}")"
curl -s "$(url n1 /no/such/endpoint)" > /dev/null
wait_until 5 "a debug line after the reload" grep -q "/no/such/endpoint" "${NODE_LOG[n1]}"
expect_eq "$(health_field n1 node_id)" n1 "node_id before a restart"

step "a broken file is refused and the node runs on"
echo "colour: blue" >> "$WORK/n1.yaml"
kill -HUP "$pid"
wait_until 5 "the refusal is logged" grep -q "SIGHUP: the configuration was not reloaded" "${NODE_LOG[n1]}"
is_healthy n1 || fail "the node stopped answering after a bad reload"
expect_eq "$(pid_of n1)" "$pid" "node pid"

step "SIGTERM still stops it cleanly"
stop_node n1
pass
