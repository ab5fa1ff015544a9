#!/usr/bin/env bash
# Replication: writes and deletes reach every node; a node killed while
# writes go on catches up after a restart; a read-only node receives
# replicated writes; a frozen (SIGSTOPped) peer does not slow the others.
source "$(dirname "$0")/lib.sh"

start_node n1 "${FAST[@]}"
wait_healthy n1
start_node n2 $(seeds n1) "${FAST[@]}"
start_node n3 $(seeds n1 n2) "${FAST[@]}"
start_node ro $(seeds n1) --read-only "${FAST[@]}"
count_is() { [ "$(member_count "$1")" = "$2" ]; }
for n in n1 n2 n3 ro; do wait_ready "$n"; wait_until 10 "$n sees 4 members" count_is "$n" 4; done

step "a write on n1 is readable on n2, n3 and the read-only node"
put n1 users/john '{"name":"John"}'
for n in n2 n3 ro; do wait_until 5 "users/john on $n" has_value "$n" users/john '{"name":"John"}'; done

step "a delete on n2 is gone everywhere"
expect_status 204 DELETE "$(url n2 /kv/users/john)"
for n in n1 n3 ro; do wait_until 5 "users/john deleted on $n" lacks_key "$n" users/john; done

step "n3 is killed while 200 keys are written; after a restart it has all 200"
kill9_node n3
put_many n1 batch/ 100
for i in $(seq 101 200); do echo "PUT $(url n2 "/kv/batch/$i") $i"; done > "$WORK/n2.ops"
[ "$(batch "$WORK/n2.ops" | grep -c '^200$')" -eq 100 ] || fail "writes on n2 failed"
start_node n3 $(seeds n1 n2) "${FAST[@]}"
wait_ready n3
has_all() { [ "$(count_keys "$1" batch/)" -eq 200 ]; }
wait_until 20 "n3 has all 200 keys" has_all n3
for i in 1 100 200; do expect_eq "$(get n3 "batch/$i")" "$i" "batch/$i on n3"; done
has_all ro || wait_until 10 "the read-only node has all 200 keys" has_all ro

step "with a SIGSTOPped peer, writes are answered and reach the healthy one"
# Each write must be answered within curl's 10 s (put_many fails
# otherwise) although the frozen peer never acknowledges its pushes; how
# fast is for scripts/bench.sh.
kill -STOP "$(pid_of n3)"
put_many n1 frozen/ 200
wait_until 5 "frozen/200 on n2" has_value n2 frozen/200 200
kill -CONT "$(pid_of n3)"
wait_until 30 "n3 gets the writes made while it was frozen" has_value n3 frozen/200 200
wait_until 30 "n3 gets frozen/1" has_value n3 frozen/1 1
pass
