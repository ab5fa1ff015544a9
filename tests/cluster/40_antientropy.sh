#!/usr/bin/env bash
# Anti-entropy finds differences that push and the compatible syncs never
# see: 1000 keys written straight into one node's data directory (old
# timestamps, far behind the "latest 15"), out of 100 000, and a delete made
# while the other node was away. Regular sync and catch-up are pushed out of
# the way (hour-long intervals); only the Merkle exchange can repair this.
source "$(dirname "$0")/lib.sh"

old=$(( $(date +%s) * 1000 - 3600 * 1000 ))
new_node a; new_node b
"$KVS_BIN" load "${NODE_DIR[a]}" --count 100000 --prefix base/ --timestamp "$old" --size 60 > /dev/null
cp -r "${NODE_DIR[a]}" "${NODE_DIR[b]}"
"$KVS_BIN" load "${NODE_DIR[b]}" --count 1000 --prefix diff/ --timestamp "$old" --size 60 > /dev/null
"$KVS_BIN" verify "${NODE_DIR[b]}" > /dev/null || fail "summary of b does not match its data"

SLOW=(--sync-interval 3600 --catchup-interval 3600 --gossip-interval-min 0.2 --gossip-interval-max 0.4
      --failure-timeout 5 --removal-timeout 10 --throttle-delay-ms 5 --fetch-delay-ms 2)

step "a deletes base/000000007 while b is not there"
start_node a "${SLOW[@]}" --antientropy-interval 3600
wait_healthy a
expect_status 204 DELETE "$(url a /kv/base/000000007)"
stop_node a

start_node b "${SLOW[@]}" --antientropy-interval 1
wait_healthy b
start_node a $(seeds b) "${SLOW[@]}" --antientropy-interval 1
wait_healthy a
expect_eq "$(count_keys a diff/)" 0 "diff/ keys on a before anti-entropy"

root() { curl -s --max-time 5 "$(url "$1" /internal/tree/root)"; }
converged() { [ "$(root a)" = "$(root b)" ]; }
t0=$(now_ms)
wait_until 60 "a and b hold the same versions" converged
step "converged in $(( $(now_ms) - t0 )) ms"
expect_eq "$(count_keys a diff/)" 1000 "diff/ keys on a"
expect_eq "$(get a diff/000000999)" "$(get b diff/000000999)" "a repaired value"
step "the deleted key does not come back, on either side"
lacks_key b base/000000007 || fail "b still has the deleted key"
lacks_key a base/000000007 || fail "the deleted key came back on a"
expect_eq "$(get a base/000000008)" "$(get b base/000000008)" "an untouched key"
bytes=$(curl -s "$(url a /metrics)" "$(url b /metrics)" | awk '/^kvs_antientropy_bytes_total/ {s += $2} END {print s}')
step "anti-entropy traffic, both sides: $bytes bytes"
pass
