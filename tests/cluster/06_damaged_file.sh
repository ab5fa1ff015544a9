#!/usr/bin/env bash
# A damaged data file is refused with one clear line before LMDB maps it:
# data.mdb cut to half its size (which used to kill the node with SIGBUS at
# start, printing nothing) and data.mdb emptied or deleted (which used to
# start an empty node that answered 404 for every key it had). kvs verify
# refuses them the same way. A value with one flipped bit is listed by kvs
# verify and answered 500 naming the key, never served. The undamaged copy
# still starts with every key.
source "$(dirname "$0")/lib.sh"

start_node n1
wait_healthy n1
put_many n1 k 300
stop_node n1
dir=${NODE_DIR[n1]}
for copy in half empty gone; do cp -a "$dir" "$WORK/$copy"; done
size=$(stat -c %s "$dir/data.mdb")
truncate -s $((size / 2)) "$WORK/half/data.mdb"
truncate -s 0 "$WORK/empty/data.mdb"
rm "$WORK/gone/data.mdb"

# refused DIR TEXT: a node on DIR exits 1 at once with one error line
# containing TEXT; `kvs verify DIR` fails with the same line.
refused() {
  local rc=0 out=$WORK/out.$1
  (cd "$WORK" && timeout 20 "$KVS_BIN" --node-id n1 --port "${NODE_PORT[n1]}" --data-dir "$WORK/$1" > "$out" 2>&1) || rc=$?
  expect_eq "$rc" 1 "exit status on the $1 data file"
  grep -q "$2" "$out" || fail "no line saying '$2' for the $1 data file: $(cat "$out")"
  expect_eq "$(grep -c "$2" "$out")" 1 "lines saying '$2'"
  rc=0
  "$KVS_BIN" verify "$WORK/$1" > "$out" 2>&1 || rc=$?
  [ "$rc" -ne 0 ] || fail "kvs verify accepted the $1 data file"
  grep -q "$2" "$out" || fail "kvs verify on the $1 data file: $(cat "$out")"
}

step "data.mdb cut to half its size"
refused half "shorter than the"
step "data.mdb emptied"
refused empty "is empty"
step "data.mdb deleted"
refused gone "is missing"

step "a flipped bit in a stored value: found by kvs verify, never served"
start_node n2
wait_healthy n2
marker="damage-me-$RANDOM$RANDOM"
put n2 dmg/key "\"$marker\"" || fail "write failed"
put_many n2 ok 20
stop_node n2
flip_bits "${NODE_DIR[n2]}/data.mdb" "$marker"
rc=0
"$KVS_BIN" verify "${NODE_DIR[n2]}" > "$WORK/verify.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "kvs verify did not notice the damaged value"
grep -q "damaged: dmg/key: checksum mismatch" "$WORK/verify.out" || fail "kvs verify: $(cat "$WORK/verify.out")"
start_node n2
wait_healthy n2
expect_eq "$(status GET "$(url n2 /kv/dmg/key)")" 500 "status of the damaged key"
curl -s "$(url n2 /kv/dmg/key)" | grep -q 'dmg/key' || fail "the 500 does not name the key"
expect_eq "$(status GET "$(url n2 '/kv/dmg/?recurse')")" 500 "status of a listing with the damaged value"
has_value n2 ok1 1 || fail "an undamaged key is not served"
[ "$(metric n2 kvs_damaged_versions_total)" -ge 1 ] || fail "the damage was not counted"
grep -q 'damaged version of "dmg/key" in table versions' "${NODE_LOG[n2]}" || fail "the log does not name the key and table"

step "the undamaged directory starts with all 300 keys"
start_node n1
wait_healthy n1
expect_eq "$(count_keys n1 k)" 300 "keys after restart"

pass
