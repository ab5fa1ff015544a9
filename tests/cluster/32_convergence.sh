#!/usr/bin/env bash
# Convergence under forced conflicts: every node's clock is frozen (the
# KVS_TEST_CLOCK_MS test hook), so concurrent writes of one key on two nodes
# get equal timestamps. Four clients write and delete random keys on random
# nodes; afterwards every node holds exactly the same versions.
source "$(dirname "$0")/lib.sh"

export KVS_TEST_CLOCK_MS=1700000000000
start_node n1 "${FAST[@]}"
wait_healthy n1
start_node n2 $(seeds n1) "${FAST[@]}"
start_node n3 $(seeds n1 n2) "${FAST[@]}"
count_is() { [ "$(member_count "$1")" = "$2" ]; }
for n in n1 n2 n3; do wait_ready "$n"; wait_until 10 "$n sees 3 members" count_is "$n" 3; done
unset KVS_TEST_CLOCK_MS

client() { # client SEED: 60 random writes and deletes on random nodes
  local seed=$1 i node key
  RANDOM=$seed
  for i in $(seq 1 60); do
    node=n$((RANDOM % 3 + 1)); key="k$((RANDOM % 12))"
    if [ $((RANDOM % 6)) -eq 0 ]; then
      echo "DELETE $(url "$node" "/kv/race/$key")"
    else
      echo "PUT $(url "$node" "/kv/race/$key") {\"c\":$seed,\"i\":$i}"
    fi
  done > "$WORK/ops.$seed"
  batch "$WORK/ops.$seed" > "$WORK/codes.$seed"
}
pids=()
for s in 11 22 33 44; do client "$s" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || true; done
bad=$(cat "$WORK"/codes.* | grep -Evc '^(200|204)$' || true)
[ "$bad" -eq 0 ] || fail "$bad client requests failed"

snapshot() { curl -s --max-time 5 "$(url "$1" '/kv/race/?recurse')"; }
root() { curl -s --max-time 5 "$(url "$1" /internal/tree/root)"; }
converged() {
  local a; a=$(root n1)
  [ -n "$a" ] && [ "$a" = "$(root n2)" ] && [ "$a" = "$(root n3)" ] &&
    [ "$(snapshot n1)" = "$(snapshot n2)" ] && [ "$(snapshot n1)" = "$(snapshot n3)" ]
}
wait_until 60 "all three nodes hold the same versions" converged
conflicts=$(cat "${NODE_LOG[n1]}" "${NODE_LOG[n2]}" "${NODE_LOG[n3]}" | grep -c 'wins by' || true)
step "converged; $conflicts conflicts were resolved on the way"
[ "$conflicts" -gt 0 ] || fail "no conflict happened: the test did not force any"
wait_rounds n1 kvs_sync_runs_total 2
converged || fail "the nodes diverged again after converging"
pass
