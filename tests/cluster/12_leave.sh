#!/usr/bin/env bash
# POST /members/leave: the node tells its peers, which drop it at once; it
# keeps serving reads of its own data alone, refuses client writes (503),
# stays idle (no busy loop), and still stops cleanly on SIGTERM.
source "$(dirname "$0")/lib.sh"

start_node a "${FAST[@]}"
wait_healthy a
start_node b $(seeds a) "${FAST[@]}"
start_node c $(seeds a) "${FAST[@]}"
count_is() { [ "$(member_count "$1")" = "$2" ]; }
for n in a b c; do wait_ready "$n"; wait_until 10 "$n sees 3" count_is "$n" 3; done
put a before/leave '"x"'
wait_until 5 "replicated to c" has_value c before/leave '"x"'

step "c leaves"
out=$(curl -s --max-time 10 -X POST "$(url c /members/leave)")
echo "$out" | grep -q '"left":true' || fail "leave reply: $out"
for n in a b; do wait_until 2 "$n drops c" count_is "$n" 2; done
count_is c 1 || fail "c still counts members after leaving"
expect_eq "$(get c before/leave)" '"x"' "c serves its data after leaving"
expect_status 503 PUT "$(url c /kv/alone)" --data-binary 1
curl -s -X PUT --data-binary 1 "$(url c /kv/alone)" | grep -q 'left the cluster' || fail "the 503 does not say why"
expect_status 404 GET "$(url c /kv/alone)"

step "a node that left stays idle"
cpu() { awk '{print $14 + $15}' "/proc/$(pid_of c)/stat"; }
# Measure c's CPU while a gossips ten rounds (2 s or more).
t0=$(cpu); s0=$(now_ms)
wait_rounds a kvs_gossip_rounds_total 10
t1=$(cpu); secs=$(( ($(now_ms) - s0) / 1000 + 1 ))
ticks=$((t1 - t0))
[ "$ticks" -lt $((30 * secs)) ] || fail "c used $ticks CPU ticks in about $secs s while idle (busy loop?)"
step "and stops on SIGTERM"
stop_node c
pass
