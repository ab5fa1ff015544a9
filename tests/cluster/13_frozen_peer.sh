#!/usr/bin/env bash
# A frozen peer (SIGSTOP: its sockets accept but nothing answers) must not
# make the healthy members doubt each other: with failure_timeout 2 s and
# node3 frozen for 10 s, node1 and node2 never mark each other unhealthy,
# and writes keep replicating between them within a second. node3 is marked
# unhealthy (then dropped) by both, and alive again once it resumes.
source "$(dirname "$0")/lib.sh"

for n in node1 node2 node3; do new_node "$n"; done
start_node node1 "${FAST[@]}"
wait_healthy node1
for n in node2 node3; do start_node "$n" --seed "$(addr node1)" "${FAST[@]}"; done
for n in node2 node3; do wait_healthy "$n"; done

member_state() {
  curl -s --max-time 2 "$(url "$1" /members/)" | grep -o "{[^}]*\"id\":\"$2\"[^}]*}" | grep -o '"state":"[a-z]*"' | cut -d'"' -f4
}
lists() { [ "$(member_state "$1" "$2")" = "$3" ]; }
count_is() { [ "$(member_count "$1")" = "$2" ]; }
for n in node1 node2 node3; do wait_until 10 "$n sees 3 members" count_is "$n" 3; done

step "freeze node3 for 10 s"
kill -STOP "$(pid_of node3)"
frozen_at=$(now_ms)
i=0
while [ $(( $(now_ms) - frozen_at )) -lt 10000 ]; do
  i=$((i + 1))
  lists node1 node2 alive || fail "node1 doubts node2 ($(member_state node1 node2)) $(( $(now_ms) - frozen_at )) ms into the freeze"
  lists node2 node1 alive || fail "node2 doubts node1 ($(member_state node2 node1)) $(( $(now_ms) - frozen_at )) ms into the freeze"
  put node1 "frozen/$i" "{\"i\":$i}" || fail "a write on node1 failed during the freeze"
  wait_until 1 "frozen/$i reaches node2 within 1 s" has_value node2 "frozen/$i" "{\"i\":$i}"
  sleep 0.2
done
step "$i writes replicated between the healthy two during the freeze"
for n in node1 node2; do
  ! lists "$n" node3 alive || fail "$n still lists the frozen node3 as alive"
  grep -q "member node3 is unhealthy" "${NODE_LOG[$n]}" || fail "$n never marked the frozen node3 unhealthy"
done

step "node3 resumes and is healthy again everywhere"
kill -CONT "$(pid_of node3)"
for n in node1 node2; do wait_until 10 "$n sees node3 alive again" lists "$n" node3 alive; done

step "neither healthy node ever marked the other unhealthy or dropped it"
if grep -E "member node2 (is unhealthy|removed)" "${NODE_LOG[node1]}"; then fail "node1 doubted node2"; fi
if grep -E "member node1 (is unhealthy|removed)" "${NODE_LOG[node2]}"; then fail "node2 doubted node1"; fi

pass
