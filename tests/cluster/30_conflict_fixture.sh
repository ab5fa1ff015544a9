#!/usr/bin/env bash
# The conflict fixture tool: two data directories holding the same key with
# the same timestamp and different data, started as a 2-node cluster,
# converge to one version on both. Then the same with a tombstone on one side.
source "$(dirname "$0")/lib.sh"

new_node n1; new_node n2
out=$("$KVS_BIN" test-conflict "${NODE_DIR[n1]}" "${NODE_DIR[n2]}")
echo "$out" | grep -q '^key: test/conflict$' || fail "fixture output: $out"
[ "$(echo "$out" | grep -c 'uuid')" -eq 2 ] || fail "fixture did not print two versions: $out"
"$KVS_BIN" test-conflict "${NODE_DIR[n1]}" "${NODE_DIR[n2]}" --key test/tomb --tombstone-in "${NODE_DIR[n2]}" > /dev/null

start_node n1 "${FAST[@]}"
wait_healthy n1
start_node n2 $(seeds n1) "${FAST[@]}"
wait_healthy n2

etag() { curl -s --max-time 2 -D - -o /dev/null "$(url "$1" "/kv/$2")" | tr -d '\r' | sed -n 's/^[Ee][Tt]ag: //p'; }
same_version() {
  local a b
  a=$(etag n1 "$1"); b=$(etag n2 "$1")
  [ -n "$a" ] && [ "$a" = "$b" ]
}
both_gone() { lacks_key n1 "$1" && lacks_key n2 "$1"; }
step "test/conflict converges to one version on both nodes"
wait_until 20 "both nodes hold the same version of test/conflict" same_version test/conflict
expect_eq "$(get n1 test/conflict)" "$(get n2 test/conflict)" "values"
grep -h 'conflict on test/conflict' "${NODE_LOG[n1]}" "${NODE_LOG[n2]}" | grep -q 'wins by' \
  || fail "no resolution logged"

step "a tombstone and a value with equal timestamps converge too"
converged_tomb() { both_gone test/tomb || same_version test/tomb; }
wait_until 20 "test/tomb converges" converged_tomb
step "and stay converged"
wait_rounds n1 kvs_sync_runs_total 2
converged_tomb || fail "test/tomb diverged again"
same_version test/conflict || fail "test/conflict diverged again"
# Both keys met a version with the same timestamp: each was detected (on
# one node or both) and counted.
detected=$(( $(metric n1 kvs_conflicts_detected_total) + $(metric n2 kvs_conflicts_detected_total) ))
[ "$detected" -ge 2 ] || fail "conflicts detected on both nodes together: $detected, expected at least 2"
pass
