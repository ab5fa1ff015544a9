#!/usr/bin/env bash
# Watch: X-Kvs-Index on every /kv/ reply; a blocking GET on one node is
# woken by a write on another (replicated), and answers after `wait`
# otherwise; 40 parked watchers on a node with 2 HTTP workers leave it
# serving; the changes feed reports each key once, deletions included, and
# answers 410 for an index from before a restart; the index never goes
# down across a restart; `kvs watch` prints changes as they come.
source "$(dirname "$0")/lib.sh"

start_node a "${FAST[@]}"
wait_healthy a
start_node b $(seeds a) --http-threads 2 "${FAST[@]}"
wait_ready b
two() { [ "$(member_count "$1")" = 2 ]; }
wait_until 10 "a and b see each other" two a
wait_until 10 "b sees a" two b
index_of() { curl -s -D - -o /dev/null --max-time 5 "$1" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-kvs-index" {print $2}'; }

step "X-Kvs-Index on reads, listings and writes, growing with each change"
i0=$(index_of "$(url b /kv/jobs/?keys)")
[ -n "$i0" ] || fail "no X-Kvs-Index on a listing"
put a jobs/1 '{"state":"new"}'
wait_until 5 "jobs/1 on b" has_value b jobs/1 '{"state":"new"}'
i1=$(index_of "$(url b /kv/jobs/1)")
[ "$i1" -gt "$i0" ] || fail "b's index did not grow with a replicated change ($i0 -> $i1)"
iw=$(curl -s -D - -o /dev/null -X PUT --data-binary 1 "$(url a /kv/other)" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-kvs-index" {print $2}')
[ -n "$iw" ] || fail "no X-Kvs-Index on a write"
[ -n "$(index_of "$(url a /kv/no/such/key)")" ] || fail "no X-Kvs-Index on a 404"
[ -n "$(index_of "$(url a "/kv/jobs/1?index=x")")" ] || fail "no X-Kvs-Index on a 400"

step "a blocking GET on b is woken by a write on a"
curl -s --max-time 30 "$(url b "/kv/jobs/1?index=$i1&wait=20s")" > "$WORK/woken" &
NODE_PID[blocked]=$!
parked_on_b() { [ "$(metric b kvs_parked_requests)" -ge 1 ]; }
wait_until 5 "the request is parked" parked_on_b
put a jobs/1 '{"state":"done"}'
returned() { ! kill -0 "${NODE_PID[blocked]}" 2>/dev/null; }
wait_until 5 "the parked GET returns after the write" returned
expect_eq "$(cat "$WORK/woken")" '{"state":"done"}' "what the woken GET returned"

step "without a change it answers after wait"
i2=$(index_of "$(url b /kv/jobs/1)")
t0=$(date +%s%N)
expect_eq "$(curl -s --max-time 10 "$(url b "/kv/jobs/1?index=$i2&wait=1s")")" '{"state":"done"}' "the unchanged value"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$ms" -ge 900 ] || fail "answered after $ms ms, before wait=1s"
step "returned after $ms ms"
expect_status 400 GET "$(url b "/kv/jobs/1?index=x")"
expect_status 400 GET "$(url b "/kv/jobs/1?index=1&wait=1h")"

step "40 parked watchers do not take b's 2 workers"
i3=$(index_of "$(url b /kv/jobs/1)")
for w in $(seq 1 40); do
  curl -s -o /dev/null --max-time 60 "$(url b "/kv/watched/$w?index=$i3&wait=30s")" &
  NODE_PID[watcher$w]=$!
done
parked40() { [ "$(metric b kvs_parked_requests)" -ge 40 ]; }
wait_until 10 "40 parked" parked40
t0=$(date +%s%N)
has_value b jobs/1 '{"state":"done"}' || fail "a GET on b failed with 40 watchers parked"
put b fresh/1 1 || fail "a PUT on b failed with 40 watchers parked"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$ms" -lt 2000 ] || fail "a GET and a PUT took $ms ms with 40 watchers parked"
put a watched/7 '{"w":7}'
gone7() { ! kill -0 "${NODE_PID[watcher7]}" 2>/dev/null; }
wait_until 5 "the watcher of watched/7 answered" gone7
kill -0 "${NODE_PID[watcher8]}" 2>/dev/null || fail "the watcher of watched/8 woke without a change"
for w in $(seq 1 40); do kill "${NODE_PID[watcher$w]}" 2>/dev/null || true; unset "NODE_PID[watcher$w]"; done

step "the changes feed: {index, changes}, each key once, deletions included"
ic=$(index_of "$(url a /kv/feed/?keys)")
put a feed/x '{"v":1}'
put a feed/y '{"v":1}'
put a feed/x '{"v":2}'
curl -s -X DELETE "$(url a /kv/feed/y)" > /dev/null
feed=$(curl -s "$(url a "/kv/feed/?changes&index=$ic")")
expect_eq "$(grep -o '"key":"feed/[xy]"' <<<"$feed" | sort | tr -d '\n')" '"key":"feed/x""key":"feed/y"' "keys in the feed"
grep -q '"key":"feed/x","value":{"v":2}' <<<"$feed" || fail "feed/x is not at its newest value: $feed"
grep -q '"key":"feed/y","deleted":true' <<<"$feed" || fail "the delete of feed/y is missing: $feed"
next=$(index_of "$(url a "/kv/feed/?changes&index=$ic")")
[[ "$feed" == "{\"index\":$next,\"changes\":[{"* ]] || fail "the feed is not {\"index\":$next,\"changes\":[...]}: $feed"
expect_eq "$(curl -s "$(url a "/kv/feed/?changes&index=$next")")" "{\"index\":$next,\"changes\":[]}" "changes after the last one"

step "kvs watch prints changes as they come"
KVS_ADDR=$(addr a) "$KVS_BIN" watch feed/ > "$WORK/watch.out" 2> "$WORK/watch.err" &
NODE_PID[watch]=$!
watching() { [ "$(metric a kvs_parked_requests)" -ge 1 ]; }
wait_until 5 "kvs watch is waiting" watching
put a feed/z '{"v":3}'
put a elsewhere/z '{"v":3}'
curl -s -X DELETE "$(url a /kv/feed/z)" > /dev/null
two_lines() { [ "$(wc -l < "$WORK/watch.out")" -ge 2 ]; }
wait_until 5 "two changes printed" two_lines
grep -q '"key":"feed/z","value":{"v":3}' "$WORK/watch.out" || fail "watch output: $(cat "$WORK/watch.out")"
grep -q '"key":"feed/z","deleted":true' "$WORK/watch.out" || fail "watch output: $(cat "$WORK/watch.out")"
grep -q elsewhere "$WORK/watch.out" && fail "watch printed a key outside its prefix"
kill "${NODE_PID[watch]}"; unset 'NODE_PID[watch]'

step "after a restart: the index is not lower, older indexes get 410"
before=$(index_of "$(url a /kv/feed/?keys)")
stop_node a
start_node a "${FAST[@]}"
wait_ready a
after=$(index_of "$(url a /kv/feed/?keys)")
[ "$after" -ge "$before" ] || fail "the index went down across a restart ($before -> $after)"
expect_status 410 GET "$(url a "/kv/feed/?changes&index=$ic")"
expect_eq "$(index_of "$(url a "/kv/feed/?changes&index=$ic")")" "$after" "X-Kvs-Index of the 410"
pass
