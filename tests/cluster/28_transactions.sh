#!/usr/bin/env bash
# POST /batch as a transaction: checks of a key's version or absence,
# if_match / if_absent on writes, gets in the same transaction; a failed
# check is 412 naming the op, with nothing applied; two clients racing a
# check-and-set: exactly one wins; kvs txn; and on a peer a pushed batch
# appears all at once.
source "$(dirname "$0")/lib.sh"

# Only gossip is fast: a regular sync could fetch part of a batch before its
# push arrives, and the last step looks for exactly that.
GOSSIP=(--gossip-interval-min 0.2 --gossip-interval-max 0.4)
start_node a "${GOSSIP[@]}" --max-value-bytes 1000
wait_ready a
start_node b "${GOSSIP[@]}" $(seeds a)
wait_ready b
_two() { [ "$(member_count "$1")" = 2 ]; }
wait_until 10 "a sees b" _two a
wait_until 10 "b sees a" _two b

# txn JSON: POST /batch on a; prints "STATUS BODY".
txn() {
  curl -s --max-time 10 -o "$WORK/body" -w '%{http_code}' -X POST --data-binary "$1" "$(url a /batch)"
  printf ' %s' "$(cat "$WORK/body")"
}
uuid_of() { curl -s -D - -o /dev/null "$(url a "/kv/$1")" | tr -d '\r' | sed -n 's/^ETag: "\(.*\)"/\1/Ip'; }

put a t/k1 '{"v":1}'
U1=$(uuid_of t/k1)
[ -n "$U1" ] || fail "no ETag for t/k1"

step "check uuid: holds, then a wrong one is 412 naming the op, nothing applied"
out=$(txn "[{\"op\":\"check\",\"key\":\"t/k1\",\"uuid\":\"$U1\"},{\"op\":\"put\",\"key\":\"t/k2\",\"value\":2}]")
[[ $out == "200 "* && $out == *'"ok":true'* ]] || fail "a holding check: $out"
expect_eq "$(get a t/k2)" 2 "the write after a holding check"
out=$(txn '[{"op":"put","key":"t/k3","value":3},{"op":"check","key":"t/k1","uuid":"00000000-0000-4000-8000-000000000000"}]')
[[ $out == "412 "* ]] || fail "a failing check: $out"
expect_eq "$(json_field "${out#412 }" op)" 1 "the failing op"
expect_eq "$(json_field "${out#412 }" current)" "$U1" "the key's current version in the 412"
expect_eq "$(status GET "$(url a /kv/t/k3)")" 404 "a put in a transaction whose check failed"

step "check absent, if_absent and if_match"
out=$(txn '[{"op":"check","key":"t/none","absent":true},{"op":"put","key":"t/k4","value":4,"if_absent":true}]')
[[ $out == "200 "* ]] || fail "absent checks that hold: $out"
out=$(txn '[{"op":"put","key":"t/k5","value":5},{"op":"check","key":"t/k1","absent":true}]')
[[ $out == "412 "* ]] || fail "check absent on a live key: $out"
expect_eq "$(status GET "$(url a /kv/t/k5)")" 404 "nothing applied after a failed absent check"
out=$(txn '[{"op":"put","key":"t/k4","value":44,"if_absent":true}]')
[[ $out == "412 "* ]] || fail "if_absent on a live key: $out"
out=$(txn "[{\"op\":\"put\",\"key\":\"t/k1\",\"value\":{\"v\":2},\"if_match\":\"$U1\"}]")
[[ $out == "200 "* ]] || fail "if_match with the current version: $out"
out=$(txn "[{\"op\":\"delete\",\"key\":\"t/k1\",\"if_match\":\"$U1\"}]")
[[ $out == "412 "* ]] || fail "if_match with an old version: $out"
expect_eq "$(get a t/k1)" '{"v":2}' "t/k1 after a refused conditional delete"
expect_eq "$(status POST "$(url a /batch)" --data-binary '[{"op":"check","key":"t/k1"}]')" 400 "a check with neither uuid nor absent"
expect_eq "$(status POST "$(url a /batch)" --data-binary '[{"op":"get","key":"t/k1","value":1}]')" 400 "a get with a value"

step "gets read the state before the transaction's writes, with their versions"
U2=$(uuid_of t/k1)
out=$(txn '[{"op":"get","key":"t/k1"},{"op":"put","key":"t/k1","value":{"v":3}},{"op":"get","key":"t/k1"},{"op":"get","key":"t/nothing"}]')
[[ $out == "200 "* ]] || fail "gets: $out"
expect_eq "$(grep -o '"value":{"v":2}' <<< "$out" | wc -l)" 2 "both gets see the value before the put"
[[ $out == *"\"uuid\":\"$U2\""* ]] || fail "a get without the key's version: $out"
[[ $out == *'"key":"t/nothing","absent":true'* || $out == *'"absent":true,"key":"t/nothing"'* ]] || fail "a get of a missing key: $out"
expect_eq "$(get a t/k1)" '{"v":3}' "the put between the gets"

step "the values one transaction reads are bounded (4 x max_value_bytes)"
big="\"$(head -c 898 /dev/zero | tr '\0' x)\""
for i in 1 2 3 4 5; do put a "t/big$i" "$big"; done
gets() { for i in $(seq 1 "$1"); do printf '{"op":"get","key":"t/big%d"},' "$i"; done; }
expect_eq "$(status POST "$(url a /batch)" --data-binary "[$(gets 4 | sed 's/,$//')]")" 200 "4 gets of 900 bytes"
out=$(txn "[$(gets 5)"'{"op":"put","key":"t/after-big","value":1}]')
[[ $out == "400 "* && $out == *"more than 4000 bytes"* ]] || fail "5 gets of 900 bytes: $out"
expect_eq "$(status GET "$(url a /kv/t/after-big)")" 404 "a write in a refused transaction"

step "two clients racing a check-and-set on one key: exactly one wins each round"
put a t/counter 0
for round in $(seq 1 15); do
  u=$(uuid_of t/counter)
  body="[{\"op\":\"check\",\"key\":\"t/counter\",\"uuid\":\"$u\"},{\"op\":\"put\",\"key\":\"t/counter\",\"value\":$round}]"
  for c in 1 2; do
    curl -s -o /dev/null -w '%{http_code}\n' -X POST --data-binary "$body" "$(url a /batch)" > "$WORK/race.$c" &
  done
  wait_until 10 "both racers answered" bash -c "[ -s $WORK/race.1 ] && [ -s $WORK/race.2 ]"
  codes=$(cat "$WORK/race.1" "$WORK/race.2" | sort | tr '\n' ' ')
  expect_eq "$codes" "200 412 " "round $round"
  rm -f "$WORK/race.1" "$WORK/race.2"
done
expect_eq "$(get a t/counter)" 15 "the counter after 15 rounds"

step "kvs txn: results printed; a failed check exits 1 with the reason"
printf '[{"op":"get","key":"t/counter"},{"op":"put","key":"t/cli","value":1,"if_absent":true}]' > "$WORK/t.json"
KVS_ADDR=$(addr a) "$KVS_BIN" txn "$WORK/t.json" > "$WORK/txn.out" || fail "kvs txn: $(cat "$WORK/txn.out")"
grep -q '"value":15' "$WORK/txn.out" || fail "kvs txn printed $(cat "$WORK/txn.out")"
rc=0; KVS_ADDR=$(addr a) "$KVS_BIN" txn - < "$WORK/t.json" > /dev/null 2> "$WORK/txn.err" || rc=$?
expect_eq "$rc" 1 "kvs txn with a failing check"
grep -q "412" "$WORK/txn.err" || fail "kvs txn does not say why: $(cat "$WORK/txn.err")"

step "on the peer, a pushed batch appears all at once"
( while [ ! -f "$WORK/stop-poll" ]; do
    curl -s --max-time 2 "$(url b '/kv/whole/?recurse')" >> "$WORK/polls"; echo >> "$WORK/polls"
  done ) &
poller=$!
for round in $(seq 1 30); do
  ops=$(for i in $(seq 1 50); do printf '{"op":"put","key":"whole/%02d","value":%d},' "$i" "$round"; done)
  expect_eq "$(status POST "$(url a /batch)" --data-binary "[${ops%,}]")" 200 "batch $round"
done
_last() { [ "$(curl -s "$(url b /kv/whole/50)")" = 30 ]; }
wait_until 10 "the last batch on b" _last
touch "$WORK/stop-poll"; wait "$poller" 2> /dev/null || true
seen=0; rounds=""
while read -r line; do
  [ -n "$line" ] && [ "$line" != "[]" ] || continue
  values=$(grep -o '"value":[0-9]*' <<< "$line" | sort -u | wc -l)
  [ "$values" = 1 ] || fail "a poll on b saw a partial batch: $(grep -o '"value":[0-9]*' <<< "$line" | sort | uniq -c | tr '\n' ' ')"
  [ "$(grep -o '"key"' <<< "$line" | wc -l)" = 50 ] || fail "a poll on b saw $(grep -o '"key"' <<< "$line" | wc -l) of 50 keys"
  rounds="$rounds $(grep -o '"value":[0-9]*' <<< "$line" | head -n1)"
  seen=$((seen + 1))
done < "$WORK/polls"
distinct=$(tr ' ' '\n' <<< "$rounds" | grep -c . | tr -d ' ')
[ "$seen" -ge 10 ] || fail "only $seen polls saw the batches"
[ "$(tr ' ' '\n' <<< "$rounds" | sort -u | grep -c .)" -ge 2 ] || fail "the polls saw one round only ($distinct polls)"
step "  $seen polls, every one a whole batch"
stop_node b; stop_node a
pass
