#!/usr/bin/env bash
# Membership: a 3-node cluster shaped like etc/node1..3.yaml (on free ports,
# fast intervals) agrees on its members; a killed node turns unhealthy, then
# is dropped, and comes back when restarted; a node stopped with SIGTERM is
# dropped at once; a duplicate node id is refused.
source "$(dirname "$0")/lib.sh"

for n in node1 node2 node3; do new_node "$n"; done
for i in 1 2 3; do
  sed -e "s/8081/${NODE_PORT[node1]}/g; s/8082/${NODE_PORT[node2]}/g; s/8083/${NODE_PORT[node3]}/g" \
      -e "s|./data/node$i|${NODE_DIR[node$i]}|" "$ROOT/etc/node$i.yaml" > "$WORK/node$i.yaml"
done
for n in node1 node2 node3; do start_node "$n" "$WORK/$n.yaml" "${FAST[@]}"; done
for n in node1 node2 node3; do wait_healthy "$n"; done

# member_state NODE ID: the state NODE shows for member ID ("" if absent).
member_state() {
  curl -s --max-time 2 "$(url "$1" /members/)" | grep -o "{[^}]*\"id\":\"$2\"[^}]*}" | grep -o '"state":"[a-z]*"' | cut -d'"' -f4
}
lists() { [ "$(member_state "$1" "$2")" = "$3" ]; }
count_is() { [ "$(member_count "$1")" = "$2" ]; }

step "all three list three healthy members"
for n in node1 node2 node3; do wait_until 10 "$n sees 3 members" count_is "$n" 3; done
for n in node1 node2 node3; do for m in node1 node2 node3; do lists "$n" "$m" alive || fail "$n does not list $m"; done; done
step "gossip calls run on long-lived threads, not new ones every round"
# call_threads NODE: the thread ids of NODE's gossip-call threads.
call_threads() {
  local t
  for t in /proc/"$(pid_of "$1")"/task/*; do
    if [ "$(cat "$t/comm" 2>/dev/null)" = gossip-call ]; then basename "$t"; fi
  done | sort
}
has_call_threads() { [ -n "$(call_threads "$1")" ]; }
wait_until 5 "node1 has gossip-call threads" has_call_threads node1
before=$(call_threads node1)
wait_rounds node1 kvs_gossip_rounds_total 10
after=$(call_threads node1)
[ -n "$(comm -12 <(echo "$before") <(echo "$after"))" ] ||
  fail "10 gossip rounds on new threads: before [$before], after [$after]"
[ "$(echo "$after" | wc -l)" -le 16 ] || fail "more than 16 gossip-call threads: $after"
joined=$(curl -s "$(url node1 /members/)" | grep -o '{[^}]*"id":"node3"[^}]*}' | grep -o '"joined_timestamp":[0-9]*')

step "kill -9 node3: unhealthy within failure_timeout, dropped after removal_timeout"
kill9_node node3
t0=$(now_ms)
for n in node1 node2; do wait_until 6 "$n marks node3 unhealthy" lists "$n" node3 unhealthy; done
for n in node1 node2; do wait_until 3 "$n counts 2 healthy" count_is "$n" 2; done
for n in node1 node2; do wait_until 8 "$n drops node3" lists "$n" node3 ""; done
step "dropped after $(( $(now_ms) - t0 )) ms"

step "node3 restarts and is back, with its joined_timestamp"
start_node node3 "$WORK/node3.yaml" "${FAST[@]}"
wait_healthy node3
for n in node1 node2 node3; do wait_until 10 "$n sees 3 members again" count_is "$n" 3; done
now_joined=$(curl -s "$(url node1 /members/)" | grep -o '{[^}]*"id":"node3"[^}]*}' | grep -o '"joined_timestamp":[0-9]*')
expect_eq "$now_joined" "$joined" "node3's joined_timestamp after restart"

step "a second node with the id node1 is refused"
new_node dup
rc=0
(cd "$WORK" && timeout 20 "$KVS_BIN" --node-id node1 --port "${NODE_PORT[dup]}" --data-dir "$WORK/dup" \
   --seed "$(addr node2)" "${FAST[@]}" > "$WORK/dup.out" 2>&1) || rc=$?
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "a duplicate node id was not refused (exit $rc)"
grep -q 'already used' "$WORK/dup.out" || fail "no clear duplicate-id error: $(tail -3 "$WORK/dup.out")"
lists node2 node1 alive || fail "the real node1 was displaced"
expect_eq "$(curl -s "$(url node2 /members/)" | grep -o "\"address\":\"$(addr dup)\"" | wc -l | tr -d ' ')" 0 "the duplicate listed"

step "SIGTERM node2: the others drop it within a gossip round"
stop_node node2
for n in node1 node3; do wait_until 2 "$n drops node2 after its leave" lists "$n" node2 ""; done
for n in node1 node3; do count_is "$n" 2 || fail "$n does not count 2 members"; done
grep -q 'left the cluster' "${NODE_LOG[node1]}" || fail "node1 did not log node2 leaving"
grep -q 'stopped: LMDB closed' "${NODE_LOG[node2]}" || fail "node2 did not close LMDB on its way out: $(tail -3 "${NODE_LOG[node2]}")"

step "node2 restarted rejoins (stale gossip does not hide it)"
start_node node2 "$WORK/node2.yaml" "${FAST[@]}"
for n in node1 node2 node3; do wait_until 10 "$n sees 3 members after node2 rejoins" count_is "$n" 3; done

pass
