#!/usr/bin/env bash
# scripts/cluster.sh: start N local nodes in one command, status, stop.
source "$(dirname "$0")/lib.sh"

export KVS_CLUSTER_DIR=$WORK/cl
cs() { "$ROOT/scripts/cluster.sh" "$@"; }
# If anything fails, stop the nodes the script started (pids in its state file).
_stop_script_nodes() {
  [ -s "$KVS_CLUSTER_DIR/nodes" ] || return 0
  while read -r _ pid _; do kill -TERM "$pid" 2>/dev/null || true; done < "$KVS_CLUSTER_DIR/nodes"
}
trap '_stop_script_nodes; _cleanup' EXIT

out=$(cs start 3)
echo "$out" | grep -q 'started 3 nodes' || fail "start output: $out"
mapfile -t urls < <(echo "$out" | grep -o 'http://127.0.0.1:[0-9]*')
expect_eq "${#urls[@]}" 3 "addresses printed"
members() { curl -s --max-time 2 "$1/health" | grep -q '"member_count":3'; }
for u in "${urls[@]}"; do wait_until 15 "$u sees 3 members" members "$u"; done
curl -sf -X PUT --data-binary '"hi"' "${urls[0]}/kv/greeting" > /dev/null || fail "write failed"
reads() { [ "$(curl -s "$1/kv/greeting")" = '"hi"' ]; }
wait_until 5 "replicated to node3" reads "${urls[2]}"
cs status | grep -c '"status":"ok"' | grep -q '^3$' || fail "status: $(cs status)"
mapfile -t pids < <(awk '{print $2}' "$KVS_CLUSTER_DIR/nodes")
cs stop > /dev/null
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && fail "pid $p still running after stop"; done
rc=0; cs status > /dev/null || rc=$?
expect_eq "$rc" 3 "status after stop"

step "--tls: three nodes over HTTPS with a fresh CA"
export KVS_CLUSTER_DIR=$WORK/cltls
out=$(cs start 3 --tls)
mapfile -t urls < <(echo "$out" | grep -o 'https://127.0.0.1:[0-9]*' | head -n 3)
expect_eq "${#urls[@]}" 3 "https addresses printed"
ca=$KVS_CLUSTER_DIR/tls/ca.pem
[ -f "$ca" ] || fail "no CA in $KVS_CLUSTER_DIR/tls"
tls_members() { curl -s --max-time 2 --cacert "$ca" "$1/health" | grep -q '"member_count":3'; }
for u in "${urls[@]}"; do wait_until 15 "$u sees 3 members" tls_members "$u"; done
curl -sf --cacert "$ca" -X PUT --data-binary '"tls"' "${urls[0]}/kv/greeting" > /dev/null || fail "https write failed"
tls_reads() { [ "$(curl -s --cacert "$ca" "$1/kv/greeting")" = '"tls"' ]; }
wait_until 5 "replicated over TLS to node3" tls_reads "${urls[2]}"
cs status | grep -c '"status":"ok"' | grep -q '^3$' || fail "status: $(cs status)"
cs stop > /dev/null
pass
