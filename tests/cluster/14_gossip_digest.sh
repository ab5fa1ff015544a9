#!/usr/bin/env bash
# Gossip sends digests, not member lists: once five nodes agree and have no
# news left, an exchange that brings node1's own digest is answered with
# node1's entry and digest only (O(1) bytes, whatever the cluster's size),
# while one without a digest gets the whole table. Then a killed member is
# suspected, the suspicion spreads, and it turns unhealthy everywhere.
source "$(dirname "$0")/lib.sh"

start_node n1 "${FAST[@]}"
wait_healthy n1
for n in n2 n3 n4 n5; do start_node "$n" $(seeds n1) "${FAST[@]}"; done
for n in n2 n3 n4 n5; do wait_healthy "$n"; done
count_is() { [ "$(member_count "$1")" = "$2" ]; }
for n in n1 n2 n3 n4 n5; do wait_until 10 "$n knows all 5" count_is "$n" 5; done

gossip() { curl -s --max-time 2 -X POST --data-binary "$1" "$(url n1 /internal/gossip)"; }

step "an exchange without a digest gets the whole table"
whole=$(gossip '{}')
expect_eq "$(grep -o '"id":"n[0-9]"' <<<"$whole" | sort -u | wc -l | tr -d ' ')" 5 "members in the reply"

step "once idle, an exchange with node1's digest gets no table and no news"
# quiet: node1 answers its own digest with nothing but its entry.
quiet() {
  local d reply
  d=$(grep -o '"digest":[0-9]*' <<<"$(gossip '{}')" | cut -d: -f2)
  [ -n "$d" ] || return 1
  reply=$(gossip "{\"digest\":$d}")
  LAST_REPLY=$reply
  ! grep -q '"members"\|"rumors"' <<<"$reply"
}
wait_until 30 "node1 answers an agreeing digest with no table and no rumors" quiet
bytes=${#LAST_REPLY}
step "agreeing reply: $bytes bytes; whole table: ${#whole} bytes"
[ "$bytes" -lt 300 ] || fail "an agreeing exchange cost $bytes bytes: $LAST_REPLY"
grep -q '"from":{"id":"n1"' <<<"$LAST_REPLY" || fail "the reply lacks node1's own entry: $LAST_REPLY"

step "all five reach the same digest"
digest_of() { grep -o '"digest":[0-9]*' <<<"$(curl -s --max-time 2 -X POST --data-binary '{}' "$(url "$1" /internal/gossip)")" | cut -d: -f2; }
agree() { local d; d=$(digest_of n1); for n in n2 n3 n4 n5; do [ "$(digest_of "$n")" = "$d" ] || return 1; done; }
wait_until 10 "every node has node1's digest" agree

step "kill -9 n5: suspected, then unhealthy on all four others"
kill9_node n5
member_state() {
  curl -s --max-time 2 "$(url "$1" /members/)" | grep -o "{[^}]*\"id\":\"$2\"[^}]*}" | grep -o '"state":"[a-z]*"' | cut -d'"' -f4
}
lists() { [ "$(member_state "$1" "$2")" = "$3" ]; }
for n in n1 n2 n3 n4; do wait_until 8 "$n marks n5 unhealthy" lists "$n" n5 unhealthy; done
for n in n1 n2 n3 n4; do
  for m in n1 n2 n3 n4; do lists "$n" "$m" alive || fail "$n doubts $m"; done
done
for n in n1 n2 n3 n4; do
  grep -q "member n5 is unhealthy (suspected for failure_timeout)" "${NODE_LOG[$n]}" || fail "$n did not log why n5 is unhealthy"
done
pass
