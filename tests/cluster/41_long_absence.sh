#!/usr/bin/env bash
# A node away for longer than bootstrap_max_age_hours missed a delete whose
# tombstone has since been purged everywhere else. When it comes back it
# must not resurrect the key: it reconciles with a peer first (dropping the
# old keys the peer lacks) and serves no anti-entropy until then.
# bootstrap_max_age_hours is 0.001 here (3.6 s) so the test runs in seconds.
source "$(dirname "$0")/lib.sh"

AGE=(--bootstrap-max-age-hours 0.001 --antientropy-interval 1)
start_node a "${FAST[@]}" "${AGE[@]}"
wait_ready a
start_node b $(seeds a) "${FAST[@]}" "${AGE[@]}"
wait_ready b
put a doomed/key '"old"'
put a kept/key '"stays"'
wait_until 5 "b has doomed/key" has_value b doomed/key '"old"'
wait_until 5 "b has kept/key" has_value b kept/key '"stays"'

step "b stops; a deletes doomed/key and purges its tombstone"
stop_node b
expect_status 204 DELETE "$(url a /kv/doomed/key)"
tombstones() { curl -s --max-time 2 "$(url a /metrics)" | awk '/^kvs_tombstones / {print $2}'; }
purged() { [ "$(tombstones)" = 0 ]; }
wait_until 20 "a purges the tombstone" purged

step "b comes back after more than bootstrap_max_age_hours"
start_node b $(seeds a) "${FAST[@]}" "${AGE[@]}"
wait_healthy b
grep -q 'has not heard from a peer' "${NODE_LOG[b]}" || fail "b did not notice its long absence"
wait_until 20 "b drops the key deleted while it was away" lacks_key b doomed/key
grep -q 'reconciled with a' "${NODE_LOG[b]}" || fail "b did not log its reconciliation"
step "the key stays deleted on both, through more anti-entropy rounds"
wait_rounds a kvs_antientropy_rounds_total 2
wait_rounds b kvs_antientropy_rounds_total 2
lacks_key a doomed/key || fail "doomed/key came back on a"
lacks_key b doomed/key || fail "doomed/key came back on b"
expect_eq "$(get b kept/key)" '"stays"' "a key that was not deleted"
pass
