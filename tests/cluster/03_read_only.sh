#!/usr/bin/env bash
# read_only: client writes get 403 and change nothing; reads work.
source "$(dirname "$0")/lib.sh"

start_node a
wait_healthy a
put a k '"before"'
stop_node a

start_node a --read-only
wait_healthy a
expect_eq "$(health_field a mode)" "read-only" "/health mode"
expect_status 403 PUT "$(url a /kv/k)" --data-binary '"after"'
expect_status 403 DELETE "$(url a /kv/k)"
body=$(curl -s --max-time 5 -X PUT --data-binary 1 "$(url a /kv/new)")
echo "$body" | grep -q '"error":".*read-only' || fail "403 body: $body"
expect_eq "$(get a k)" '"before"' "value after refused writes"
expect_status 404 GET "$(url a /kv/new)"
pass
