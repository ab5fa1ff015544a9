#!/usr/bin/env bash
# Writes that wait for W copies (DESIGN §7): ?w=N|quorum|all and
# write_acks. A 200 with acks K means K nodes hold the write at that
# moment (a read-only node acknowledges too); a frozen peer makes it 504
# after write_ack_timeout with the write kept; too few healthy members is
# 503 with nothing written; w above the member count is 400; a waiting
# write holds no handling thread.
source "$(dirname "$0")/lib.sh"

ACK=(--write-ack-timeout 1)
start_node a "${FAST[@]}" "${ACK[@]}"
wait_ready a
start_node b "${FAST[@]}" "${ACK[@]}" $(seeds a)
# c is read-only: it takes no client writes but applies and acknowledges
# replicated ones.
start_node c "${FAST[@]}" "${ACK[@]}" --read-only $(seeds a)
wait_ready b; wait_ready c
_three() { [ "$(member_count "$1")" = 3 ]; }
for n in a b c; do wait_until 10 "$n sees 3 members" _three "$n"; done

# wput NODE KEY VALUE QUERY: PUT; prints "STATUS BODY" (and saves headers).
wput() {
  curl -s --max-time 10 -D "$WORK/headers" -o "$WORK/body" -w '%{http_code}' -X PUT \
    --data-binary "$3" "$(url "$1" "/kv/$2$4")"
  printf ' %s' "$(cat "$WORK/body")"
}
# holders KEY VALUE: how many nodes hold VALUE for KEY right now.
holders() {
  local n=0 node
  for node in a b c; do
    [ "$(curl -s --max-time 2 "$(url "$node" "/kv/$1")")" = "$2" ] && n=$((n + 1))
  done
  echo "$n"
}

step "w=2, w=quorum and w=all: the 200 comes once that many nodes hold the write"
for q in 2 quorum all; do
  out=$(wput a "acks/$q" "{\"w\":\"$q\"}" "?w=$q")
  want=2; [ "$q" = all ] && want=3
  [[ $out == "200 "* ]] || fail "w=$q: $out"
  acks=$(json_field "${out#200 }" acks)
  [ "$acks" -ge "$want" ] || fail "w=$q answered with acks $acks"
  got=$(holders "acks/$q" "{\"w\":\"$q\"}")
  [ "$got" -ge "$want" ] || fail "w=$q: only $got nodes hold the write when the 200 arrives"
  grep -qi "^X-Kvs-Acks: $acks" "$WORK/headers" || fail "no X-Kvs-Acks header: $(cat "$WORK/headers")"
done
out=$(wput a acks/plain '{"w":1}' "")
[[ $out == '200 {"uuid":'* && $out != *acks* ]] || fail "a plain PUT changed its answer: $out"

step "w above the member count, or not a w: 400; a DELETE and a batch with w"
expect_eq "$(status PUT "$(url a '/kv/acks/x?w=5')" --data-binary 1)" 400 "w=5 in a 3-node cluster"
expect_eq "$(status PUT "$(url a '/kv/acks/x?w=most')" --data-binary 1)" 400 "w=most"
expect_eq "$(status GET "$(url a /kv/acks/x)")" 404 "nothing written by the refused writes"
out=$(curl -s -X DELETE "$(url b '/kv/acks/2?w=all')")
[ "$(json_field "$out" acks)" = 3 ] || fail "DELETE w=all: $out"
expect_eq "$(holders acks/2 '{"w":"2"}')" 0 "nodes still holding the deleted key"
out=$(curl -s -X POST --data-binary '[{"op":"put","key":"acks/b1","value":1},{"op":"put","key":"acks/b2","value":2}]' "$(url b '/batch?w=2')")
[ "$(json_field "$out" acks)" -ge 2 ] || fail "batch w=2: $out"
[ "$(holders acks/b1 1)" -ge 2 ] && [ "$(holders acks/b2 2)" -ge 2 ] || fail "the batch is not on two nodes at its 200"
out=$(curl -s -X DELETE "$(url a '/kv/acks/?recurse&w=all')")
[ "$(json_field "$out" acks)" = 3 ] || fail "recursive DELETE w=all: $out"
expect_eq "$(holders acks/b1 1)" 0 "nodes holding a key deleted with w=all"

step "the CLI: kvs put --w all"
KVS_ADDR=$(addr a) "$KVS_BIN" put cli/w '{"c":1}' --w all > "$WORK/cli.out" || fail "kvs put --w all: $(cat "$WORK/cli.out")"
grep -q '"acks":3' "$WORK/cli.out" || fail "kvs put --w all printed $(cat "$WORK/cli.out")"

step "one node frozen: w=all is 504 after write_ack_timeout, the write kept, and on the third node after SIGCONT"
kill -STOP "$(pid_of c)"
started=$(now_ms)
out=$(wput a frozen/1 '{"f":1}' "?w=all")
took=$(( $(now_ms) - started ))
[[ $out == "504 "* ]] || fail "w=all with a frozen node: $out"
expect_eq "$(json_field "${out#504 }" acks)" 2 "acks in the 504"
expect_eq "$(json_field "${out#504 }" wanted)" 3 "wanted in the 504"
[[ $out == *'"uuid"'* && $out == *'"timestamp"'* ]] || fail "the 504 lacks the version: $out"
[ "$took" -ge 900 ] && [ "$took" -lt 4000 ] || fail "the 504 came after $took ms (write_ack_timeout 1 s)"
[ "$(curl -s "$(url a /kv/frozen/1)")" = '{"f":1}' ] && [ "$(curl -s "$(url b /kv/frozen/1)")" = '{"f":1}' ] \
  || fail "the write is not on the two live nodes"
rc=0; KVS_ADDR=$(addr a) "$KVS_BIN" put cli/frozen 1 --w all > /dev/null 2> "$WORK/cli.err" || rc=$?
expect_eq "$rc" 1 "kvs put --w all with a node frozen"
grep -q "504" "$WORK/cli.err" || fail "the CLI does not say why: $(cat "$WORK/cli.err")"
kill -CONT "$(pid_of c)"
_on_c() { [ "$(curl -s --max-time 2 "$(url c /kv/frozen/1)")" = '{"f":1}' ]; }
wait_until 10 "the write on c after SIGCONT" _on_c
metrics=$(curl -s "$(url a /metrics)")
grep -q '^kvs_write_acks_timeout_total [1-9]' <<< "$metrics" || fail "504s are not counted"
grep -q '^kvs_write_ack_wait_seconds_count [1-9]' <<< "$metrics" || fail "no wait histogram"

step "kill -9 of the answering node right after a w=2 200: a survivor holds the write"
out=$(wput b survive/1 '{"s":1}' "?w=2")
kill9_node b
[[ $out == "200 "* ]] || fail "w=2: $out"
n=0
for node in a c; do [ "$(curl -s --max-time 2 "$(url "$node" /kv/survive/1)")" = '{"s":1}' ] && n=$((n + 1)); done
[ "$n" -ge 1 ] || fail "no survivor holds the acknowledged write"

step "two nodes down: w=2 is 503 with healthy and wanted, nothing written"
kill9_node c
_alone() { [ "$(member_count a)" = 1 ]; }
wait_until 15 "a sees b and c unhealthy" _alone
out=$(wput a down/1 '{"d":1}' "?w=2")
[[ $out == "503 "* ]] || fail "w=2 with two nodes down: $out"
expect_eq "$(json_field "${out#503 }" healthy)" 1 "healthy in the 503"
expect_eq "$(json_field "${out#503 }" wanted)" 2 "wanted in the 503"
expect_eq "$(status GET "$(url a /kv/down/1)")" 404 "a refused w=2 write"
grep -q '^kvs_write_acks_unavailable_total [1-9]' <<< "$(curl -s "$(url a /metrics)")" || fail "503s are not counted"
stop_node a

step "write_acks: 2 in the config; a frozen peer: every waiting write 504 in time, GET and w=1 PUT served meanwhile"
start_node d "${FAST[@]}" "${ACK[@]}" --write-acks 2 --http-threads 2
wait_ready d
start_node e "${FAST[@]}" "${ACK[@]}" $(seeds d)
wait_ready e
_two() { [ "$(member_count "$1")" = 2 ]; }
wait_until 10 "d sees 2 members" _two d
out=$(curl -s -X PUT --data-binary '{"cfg":2}' "$(url d /kv/cfg/1)")
expect_eq "$(json_field "$out" acks)" 2 "acks of a plain PUT under write_acks: 2"
kill -STOP "$(pid_of e)"
for i in $(seq 1 20); do
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 10 -X PUT --data-binary "$i" \
    "$(url d "/kv/waiting/$i")" > "$WORK/w.$i" &
done
for i in 1 2 3; do
  started=$(now_ms)
  expect_eq "$(status GET "$(url d /kv/cfg/1)")" 200 "GET while 20 writes wait"
  expect_eq "$(status PUT "$(url d "/kv/fresh/$i?w=1")" --data-binary 1)" 200 "a w=1 PUT while 20 writes wait"
  [ $(( $(now_ms) - started )) -lt 800 ] || fail "GET and PUT took $(( $(now_ms) - started )) ms while writes waited"
done
wait_until 10 "every waiting write answered" bash -c "[ \$(cat $WORK/w.* | wc -l) = 20 ]"
bad=$(cat "$WORK"/w.* | awk '$1 != 504 || $2 > 3.0' | wc -l)
[ "$bad" = 0 ] || fail "waiting writes not answered 504 within 3 s: $(cat "$WORK"/w.* | sort | uniq -c)"
kill -CONT "$(pid_of e)"
stop_node e; stop_node d
pass
