#!/usr/bin/env bash
# Bootstrap: a node joining with an empty data directory is `syncing`
# (client writes get 503 with Retry-After) until it has the cluster's
# history, then `normal` with every key.
source "$(dirname "$0")/lib.sh"

new_node n1
"$KVS_BIN" load "${NODE_DIR[n1]}" --count 2500 --prefix hist/ > /dev/null
start_node n1 "${FAST[@]}"
wait_healthy n1
put n1 live/one '"1"'

# Slow pages (400 ms apart) so that the syncing state lasts a while.
start_node n4 $(seeds n1) "${FAST[@]}" --throttle-delay-ms 400
wait_healthy n4
step "the new node reports syncing and refuses client writes with 503"
expect_eq "$(health_field n4 mode)" syncing "mode while bootstrapping"
curl -s --max-time 5 -D "$WORK/h" -o "$WORK/b" -X PUT --data-binary 1 "$(url n4 /kv/early)"
head -n1 "$WORK/h" | grep -q 503 || fail "a write while syncing was not 503: $(head -n1 "$WORK/h")"
grep -qi '^retry-after:' "$WORK/h" || fail "503 without Retry-After"
grep -q '"error"' "$WORK/b" || fail "503 without a JSON error"
curl -s --max-time 2 "$(url n4 /health)" | grep -q '"keys_fetched":' || fail "/health has no progress while syncing"

step "then normal, with every key"
is_normal() { [ "$(health_field n4 mode)" = normal ]; }
wait_until 30 "n4 finishes bootstrapping" is_normal
expect_eq "$(count_keys n4 hist/)" 2500 "history keys on the new node"
expect_eq "$(get n4 live/one)" '"1"' "the live key"
expect_status 200 PUT "$(url n4 /kv/late)" --data-binary 1
grep -q 'bootstrap complete' "${NODE_LOG[n4]}" || fail "no bootstrap completion in the log"
pass
