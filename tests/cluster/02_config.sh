#!/usr/bin/env bash
# Configuration: the default file, the command line, and refusals that name
# the key and exit non-zero.
source "$(dirname "$0")/lib.sh"

step "--help and --version"
"$KVS_BIN" --help | grep -q 'Usage:' || fail "--help"
"$KVS_BIN" --version | grep -Eq '^kvs [0-9]+\.[0-9]+\.[0-9]+$' || fail "--version"

step "without a config path, a commented default config.yaml is written and used"
mkdir -p "$WORK/fresh"
new_node fresh
(cd "$WORK/fresh" && exec "$KVS_BIN" --port "${NODE_PORT[fresh]}" --node-id fresh >> "${NODE_LOG[fresh]}" 2>&1) &
NODE_PID[fresh]=$!
wait_healthy fresh
[ -f "$WORK/fresh/config.yaml" ] || fail "config.yaml was not written"
[ -d "$WORK/fresh/data" ] || fail "the default data_dir ./data was not created"
for key in node_id bind_address port data_dir seed_nodes read_only log_level gossip_interval_min \
    gossip_interval_max sync_interval catchup_interval bootstrap_max_age_hours throttle_delay_ms \
    fetch_delay_ms failure_timeout removal_timeout antientropy_interval advertise_address \
    max_value_bytes http_threads max_connections header_timeout max_members scrub_interval \
    map_size_mb client_tokens cluster_secret log_file log_format join_timeout \
    tls_cert_file tls_key_file tls_ca_file tls_client_auth; do
  grep -q "^#$key: " "$WORK/fresh/config.yaml" || fail "default config lacks $key"
done
stop_node fresh

step "etc/config.yaml is the default file (under its own header)"
diff <(grep -v '^# kvs configuration\|^# leading' "$WORK/fresh/config.yaml" | sed '/./,$!d') \
     <(sed '1,4d' "$ROOT/etc/config.yaml" | sed '/./,$!d') > "$WORK/cfg.diff" \
  || fail "etc/config.yaml differs from the file kvs writes: $(head -20 "$WORK/cfg.diff")"

step "a config file is read, and options override it"
cat > "$WORK/c.yaml" <<YAML
node_id: "from-file"
port: 1
data_dir: "$WORK/fromfile"
sync_interval: 0.5
gossip_interval_min: 0.2
gossip_interval_max: 0.3
YAML
new_node ff
(cd "$WORK" && exec "$KVS_BIN" "$WORK/c.yaml" --port "${NODE_PORT[ff]}" >> "${NODE_LOG[ff]}" 2>&1) &
NODE_PID[ff]=$!
wait_healthy ff
expect_eq "$(health_field ff node_id)" from-file "node_id from the file"
[ -d "$WORK/fromfile" ] || fail "data_dir from the file not used"
stop_node ff

step "bad configurations exit non-zero with one line naming the key"
check_refused() { # check_refused KEY-IN-MESSAGE ARGS...
  local want=$1; shift
  local rc=0
  (cd "$WORK" && timeout 10 "$KVS_BIN" "$@" > "$WORK/out" 2> "$WORK/err") || rc=$?
  [ "$rc" -ne 0 ] || fail "accepted: $*"
  [ "$rc" -ne 124 ] || fail "did not exit: $*"
  grep -q -- "$want" "$WORK/err" || fail "error for '$*' does not name $want: $(cat "$WORK/err")"
  [ "$(wc -l < "$WORK/err")" -le 2 ] || fail "more than one line for '$*': $(cat "$WORK/err")"
}
bad() { printf '%s\n' "$2" > "$WORK/bad.yaml"; check_refused "$1" "$WORK/bad.yaml" --data-dir "$WORK/baddata"; }
bad colour 'colour: blue'
bad port 'port: eighty'
bad port 'port: 70000'
bad read_only 'read_only: maybe'
bad gossip_interval_min $'gossip_interval_min: 10\ngossip_interval_max: 5'
bad sync_interval 'sync_interval: 0'
bad log_level 'log_level: loud'
bad seed_nodes 'seed_nodes: ["nohost"]'
bad seed_nodes 'seed_nodes: "127.0.0.1:1"'
bad failure_timeout $'failure_timeout: 10\nremoval_timeout: 5'
bad max_connections 'max_connections: 0'
bad port $'port: 0\nseed_nodes: ["127.0.0.1:9"]'
bad max_members 'max_members: 1'
bad header_timeout 'header_timeout: 0'
bad log_format 'log_format: xml'
bad join_timeout 'join_timeout: -1'
touch "$WORK/afile.log.parent"
bad log_file "log_file: \"$WORK/afile.log.parent/kvs.log\""
# Tokens without a secret protect nothing (the internal API serves every
# value): refused as a bad configuration, exit 2, naming both keys.
bad client_tokens 'client_tokens: ["t"]'
grep -q cluster_secret "$WORK/err" || fail "tokens without a secret: $(cat "$WORK/err")"
rc=0
(cd "$WORK" && timeout 10 "$KVS_BIN" --client-tokens '[t]' --data-dir "$WORK/baddata" > /dev/null 2>&1) || rc=$?
expect_eq "$rc" 2 "exit status for client_tokens without cluster_secret"
check_refused "does not exist" "$WORK/missing.yaml"
check_refused "port" --port nope --data-dir "$WORK/baddata"
check_refused "--colour" --colour red --data-dir "$WORK/baddata"

step "an unwritable data_dir and a port in use are clear errors"
if [ "$(id -u)" = 0 ]; then
  # root writes anywhere; a path under a regular file cannot be a directory.
  touch "$WORK/afile"
  check_refused data_dir --data-dir "$WORK/afile/sub" --port "$(free_port)"
else
  mkdir -p "$WORK/ro" && chmod 500 "$WORK/ro"
  check_refused data_dir --data-dir "$WORK/ro/sub" --port "$(free_port)"
fi
start_node busy
wait_healthy busy
check_refused "port" --data-dir "$WORK/other" --port "${NODE_PORT[busy]}"

step "a second process on the same data_dir is refused"
check_refused "in use" --data-dir "${NODE_DIR[busy]}" --port "$(free_port)"

pass
