#!/usr/bin/env bash
# The command-line client: get, put (argument and stdin), delete (one key
# and --recurse), ls, members, with exit status 0 / 1 (not found, failed
# condition, refused) / 2 (usage, no connection); export of 1 500 keys in
# key order, imported into a fresh node, gives the same listing with the
# same values; a bad line stops an import and is named; a closed pipe ends
# export and ls quietly.
source "$(dirname "$0")/lib.sh"

start_node a
start_node b
wait_ready a
wait_ready b
kvs() { "$KVS_BIN" "$@"; }
export KVS_ADDR
KVS_ADDR=$(addr a)
rc_of() { local rc=0; "$@" > "$WORK/out" 2> "$WORK/err" || rc=$?; echo "$rc"; }

step "put from an argument and from stdin, get, exit status 1 when absent"
kvs put users/ann '{"n":1}' > /dev/null
echo '{"n":2}' | kvs put users/bob > /dev/null
expect_eq "$(kvs get users/ann)" '{"n":1}' "get users/ann"
expect_eq "$(kvs get users/bob | tr -d '\n')" '{"n":2}' "get users/bob"
expect_eq "$(rc_of kvs get users/nobody)" 1 "exit status of get for a missing key"
grep -q "not found: users/nobody" "$WORK/err" || fail "unclear: $(cat "$WORK/err")"

step "a failed condition and a refused value exit 1"
expect_eq "$(rc_of kvs put users/ann '{"n":3}' --if-match '"nope"')" 1 "put with a failing If-Match"
grep -q "412" "$WORK/err" || fail "the 412 is not shown: $(cat "$WORK/err")"
expect_eq "$(kvs get users/ann)" '{"n":1}' "users/ann after the failed condition"
expect_eq "$(rc_of kvs put users/ann '{broken')" 1 "put of invalid JSON"
grep -q "400" "$WORK/err" || fail "the 400 is not shown: $(cat "$WORK/err")"

step "usage and connection errors exit 2"
expect_eq "$(rc_of kvs get)" 2 "get without a key"
expect_eq "$(rc_of kvs get k --bogus 1)" 2 "an unknown option"
expect_eq "$(rc_of kvs get k --addr "127.0.0.1:$(free_port)")" 2 "a node that does not answer"
grep -qi "refused" "$WORK/err" || fail "unclear connection error: $(cat "$WORK/err")"

step "ls and members"
expect_eq "$(kvs ls users/ | tr '\n' ' ')" "users/ann users/bob " "kvs ls users/"
kvs members > "$WORK/members"
grep -q "^a .*alive.*(this node)" "$WORK/members" || fail "members: $(cat "$WORK/members")"

step "delete one key, then a prefix"
kvs delete users/bob
expect_eq "$(rc_of kvs delete users/bob)" 0 "deleting a missing key (a tombstone, as the API does)"
expect_eq "$(kvs delete users/ --recurse)" '{"deleted":1}' "delete --recurse"
expect_eq "$(kvs ls users/)" "" "kvs ls users/ after the deletes"

step "export 1 500 keys, import them into a fresh node"
put_many a "data/k" 1500
kvs put 'odd key/é"q' '{"text":"line\nbreak","list":[1, 2]}' > /dev/null
kvs export > "$WORK/export.jsonl" 2> "$WORK/export.err"
expect_eq "$(wc -l < "$WORK/export.jsonl" | tr -d ' ')" 1501 "exported lines"
grep -q "exported 1501 keys" "$WORK/export.err" || fail "no export summary: $(cat "$WORK/export.err")"
cut -d'"' -f4 "$WORK/export.jsonl" | LC_ALL=C sort -c || fail "the export is not in key order"
KVS_ADDR=$(addr b) kvs import "$WORK/export.jsonl" 2> "$WORK/import.err" || fail "import failed: $(cat "$WORK/import.err")"
grep -q "imported 1501 keys" "$WORK/import.err" || fail "no import summary: $(cat "$WORK/import.err")"
listing() { KVS_ADDR=$(addr "$1") kvs export 2>/dev/null | sed 's/,"timestamp":[0-9]*,"uuid":"[^"]*"}$/}/'; }
[ "$(listing a)" = "$(listing b)" ] || fail "the listings differ: $(diff <(listing a) <(listing b) | head -5)"

step "a reader that stops early ends export and ls quietly (exit 0, no panic)"
# 1 501 lines are more than a pipe holds, so kvs writes after head has gone.
set +o pipefail
kvs export 2> "$WORK/pipe.err" | head -n 1 > /dev/null; rc=${PIPESTATUS[0]}
expect_eq "$rc" 0 "exit status of kvs export | head -n 1"
kvs ls 2>> "$WORK/pipe.err" | head -n 1 > /dev/null; rc=${PIPESTATUS[0]}
expect_eq "$rc" 0 "exit status of kvs ls | head -n 1"
set -o pipefail
if grep -q panicked "$WORK/pipe.err"; then fail "a panic: $(cat "$WORK/pipe.err")"; fi

step "a bad line stops the import, named by its number"
printf '{"key":"imp/1","value":1}\n{"key":"imp/2","value":2}\n{"key":"imp/3"\n{"key":"imp/4","value":4}\n' > "$WORK/bad.jsonl"
expect_eq "$(rc_of kvs import "$WORK/bad.jsonl")" 1 "exit status of an import with a bad line"
grep -q "line 3" "$WORK/err" || fail "the bad line is not named: $(cat "$WORK/err")"
expect_eq "$(kvs ls imp/)" "" "keys written from a file with a bad line"
pass
