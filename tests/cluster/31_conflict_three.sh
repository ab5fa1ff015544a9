#!/usr/bin/env bash
# Three nodes each hold a different version of one key at the same
# timestamp: one vote each, a tie, so the version of the oldest member wins,
# on every node.
source "$(dirname "$0")/lib.sh"

new_node n1; new_node n2; new_node n3
out=$("$KVS_BIN" test-conflict "${NODE_DIR[n1]}" "${NODE_DIR[n2]}" "${NODE_DIR[n3]}" --key three/way)
uuid1=$(echo "$out" | grep "^${NODE_DIR[n1]}:" | awk '{print $3}')
# n1 starts first, so it is the oldest member (earliest joined_timestamp).
start_node n1 "${FAST[@]}"
wait_healthy n1
start_node n2 $(seeds n1) "${FAST[@]}"
start_node n3 $(seeds n1 n2) "${FAST[@]}"
wait_healthy n2; wait_healthy n3

etag() { curl -s --max-time 2 -D - -o /dev/null "$(url "$1" /kv/three/way)" | tr -d '\r' | sed -n 's/^[Ee][Tt]ag: //p' | tr -d '"'; }
all_same() { local a; a=$(etag n1); [ -n "$a" ] && [ "$a" = "$(etag n2)" ] && [ "$a" = "$(etag n3)" ]; }
wait_until 30 "three nodes agree on three/way" all_same
expect_eq "$(etag n1)" "$uuid1" "the winner (the oldest member's version)"
wait_rounds n1 kvs_sync_runs_total 2
all_same || fail "the nodes diverged again"
pass
