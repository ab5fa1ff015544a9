#!/usr/bin/env bash
# Damaged values heal from a peer. Two values are damaged (one bit each) in
# the stopped node3's data.mdb: one is read by a client, which never gets
# the wrong bytes (500 until repaired, then the right value); the other is
# read by nobody, and the scrub (scrub_interval 1 s here) finds and
# repairs it.
source "$(dirname "$0")/lib.sh"

for n in node1 node2 node3; do new_node "$n"; done
start_node node1 "${FAST[@]}" --scrub-interval 1
wait_healthy node1
for n in node2 node3; do start_node "$n" --seed "$(addr node1)" "${FAST[@]}" --scrub-interval 1; done
for n in node2 node3; do wait_ready "$n"; done

read_marker="read-me-$RANDOM$RANDOM"
idle_marker="idle-me-$RANDOM$RANDOM"
put node1 dmg/read "\"$read_marker\"" || fail "write failed"
put node1 dmg/idle "\"$idle_marker\"" || fail "write failed"
for n in node2 node3; do
  wait_until 10 "dmg/read on $n" has_value "$n" dmg/read "\"$read_marker\""
  wait_until 10 "dmg/idle on $n" has_value "$n" dmg/idle "\"$idle_marker\""
done
stop_node node3

step "flip one bit of both values in node3's data.mdb"
flip_bits "${NODE_DIR[node3]}/data.mdb" "$read_marker" "$idle_marker"
start_node node3 --seed "$(addr node1)" "${FAST[@]}" --scrub-interval 1
wait_healthy node3

step "a client reading the damaged value gets 500, never wrong bytes, then the right value"
deadline=$(( $(now_ms) + 30000 ))
while :; do
  reply=$(curl -s --max-time 5 -w '\n%{http_code}' "$(url node3 /kv/dmg/read)")
  code=${reply##*$'\n'}; body=${reply%$'\n'*}
  if [ "$code" = 200 ]; then
    expect_eq "$body" "\"$read_marker\"" "value served by node3"
    break
  fi
  [ "$code" = 500 ] || fail "unexpected status $code for the damaged key"
  [ "$(now_ms)" -lt "$deadline" ] || fail "dmg/read was not repaired within 30s"
  sleep 0.1
done

step "the value nobody reads is found by the scrub and repaired"
wait_until 30 "node3 repaired two values" bash -c "[ \"\$(curl -s $(url node3 /metrics) | awk '\$1 == \"kvs_repaired_total\" {print \$2}')\" -ge 2 ]"
has_value node3 dmg/idle "\"$idle_marker\"" || fail "dmg/idle is not served right after its repair"
grep -q 'repaired "dmg/idle"' "${NODE_LOG[node3]}" || fail "the repair of dmg/idle was not logged"
[ "$(metric node3 kvs_damaged_versions_total)" -ge 2 ] || fail "the damage was not counted"
expect_eq "$(metric node3 kvs_unrepaired_versions)" 0 "versions left unrepaired"
wait_until 10 "a scrub pass finds the summary in order" grep -q "scrub: .* summary matches" "${NODE_LOG[node3]}"

pass
