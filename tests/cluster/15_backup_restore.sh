#!/usr/bin/env bash
# Online backup: `kvs backup` (GET /backup) under a steady write load gives
# a file that `kvs restore` turns into a data directory; a node started on
# it serves every key written before the backup, as a new member (its own
# id and joined_timestamp). /backup needs a client token when tokens are
# set, and a restore never overwrites a directory that holds something.
source "$(dirname "$0")/lib.sh"

AUTH=(--cluster-secret s3cret --client-tokens '[tok]')
start_node a "${AUTH[@]}"
wait_ready a
H=(-H "Authorization: Bearer tok")
cli() { KVS_ADDR=$(addr a) KVS_TOKEN=tok "$KVS_BIN" "$@"; }

step "2000 keys, then a steady write load"
f=$WORK/load.txt
for i in $(seq 1 2000); do echo "PUT $(url a "/kv/before/$i") {\"i\":$i}"; done > "$f"
# put_many has no token: batch with one.
cfg=$WORK/load.cfg; : > "$cfg"
while read -r m u b; do
  [ -s "$cfg" ] && echo next >> "$cfg"
  printf 'url = "%s"\nrequest = "%s"\nheader = "Authorization: Bearer tok"\ndata-binary = "%s"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\nsilent\n' \
    "$u" "$m" "$(sed 's/"/\\"/g' <<<"$b")" >> "$cfg"
done < "$f"
bad=$(curl -K "$cfg" | grep -vc '^200$' || true)
expect_eq "$bad" 0 "failed writes before the backup"
(
  i=0
  while :; do
    i=$((i + 1))
    curl -s -o /dev/null --max-time 5 "${H[@]}" -X PUT --data-binary "{\"i\":$i}" "$(url a "/kv/during/$i")" || true
  done
) &
NODE_PID[loader]=$!
flowing() { [ "$(curl -s "${H[@]}" "$(url a "/kv/during/?keys&limit=50")" | grep -o '"during' | wc -l)" -ge 20 ]; }
wait_until 10 "writes flowing during the backup" flowing

step "/backup without the token: 401"
expect_status 401 GET "$(url a /backup)"

step "a refused request is counted under its own route (DELETE as kv_delete, not kv_put)"
expect_status 401 DELETE "$(url a /kv/nope)"
# The whole page first: grep -q on curl's pipe would end curl early (SIGPIPE).
refused() { local page; page=$(curl -s -H 'Authorization: Bearer tok' "$(url a /metrics)"); grep -q "^kvs_requests_total{route=\"$1\",status=\"401\"} [1-9]" <<< "$page"; }
refused kv_delete || fail "the refused DELETE is not counted as kv_delete: $(curl -s -H 'Authorization: Bearer tok' "$(url a /metrics)" | grep 'status="401"')"

step "kvs backup while writes go on"
cli backup "$WORK/a.mdb" 2> "$WORK/backup.err" || fail "kvs backup failed: $(cat "$WORK/backup.err")"
grep -q "bytes written to $WORK/a.mdb" "$WORK/backup.err" || fail "no summary: $(cat "$WORK/backup.err")"
[ ! -e "$WORK/a.mdb.partial" ] || fail "the partial file was left behind"
during_at_backup=$(curl -s "${H[@]}" "$(url a "/kv/during/?keys&limit=10000")" | grep -o '"during' | wc -l)
kill "${NODE_PID[loader]}"; wait "${NODE_PID[loader]}" 2>/dev/null || true; unset 'NODE_PID[loader]'
ls "${NODE_DIR[a]}" | grep -q '^backup-' && fail "a temporary backup file was left in the data directory"
is_healthy a || fail "node a stopped answering"

step "kvs restore refuses a directory that is not empty"
mkdir -p "$WORK/full"; echo x > "$WORK/full/keep"
rc=0; "$KVS_BIN" restore "$WORK/a.mdb" "$WORK/full" 2> "$WORK/restore.err" || rc=$?
expect_eq "$rc" 1 "exit status of a restore into a full directory"
grep -q "not empty" "$WORK/restore.err" || fail "unclear refusal: $(cat "$WORK/restore.err")"
expect_eq "$(ls "$WORK/full")" keep "what the full directory holds"
rc=0; echo "not a database" > "$WORK/junk.mdb"
"$KVS_BIN" restore "$WORK/junk.mdb" "$WORK/junkdir" 2> "$WORK/junk.err" || rc=$?
expect_eq "$rc" 1 "exit status of a restore from junk"
[ ! -e "$WORK/junkdir" ] || fail "a failed restore left $WORK/junkdir behind"

step "kvs restore, then a node on the copy"
"$KVS_BIN" restore "$WORK/a.mdb" "$WORK/b" > "$WORK/restore.out" || fail "restore failed"
grep -q "restored" "$WORK/restore.out" || fail "no summary: $(cat "$WORK/restore.out")"
new_node b
NODE_DIR[b]=$WORK/b
start_node b "${AUTH[@]}"
wait_ready b
expect_eq "$(curl -s "${H[@]}" "$(url b "/kv/before/?keys&limit=10000")" | grep -o '"before/' | wc -l | tr -d ' ')" 2000 "keys written before the backup, on the restored node"
for i in 1 777 2000; do
  expect_eq "$(curl -s "${H[@]}" "$(url b "/kv/before/$i")")" "{\"i\":$i}" "before/$i on the restored node"
done
restored_during=$(curl -s "${H[@]}" "$(url b "/kv/during/?keys&limit=10000")" | grep -o '"during' | wc -l)
[ "$restored_during" -ge 20 ] && [ "$restored_during" -le "$during_at_backup" ] \
  || fail "the copy holds $restored_during writes of the load; $during_at_backup were there when the backup ended"
step "the copy holds $restored_during of the load's writes (a consistent cut)"

step "the restored node is a new member, not the source"
ja=$(curl -s "${H[@]}" "$(url a /members/)" | grep -o '"joined_timestamp":[0-9]*' | head -1)
jb=$(curl -s "${H[@]}" "$(url b /members/)" | grep -o '"joined_timestamp":[0-9]*' | head -1)
[ "$ja" != "$jb" ] || fail "the restored node took the source's joined_timestamp ($jb)"
grep -q "belonged to node" "${NODE_LOG[b]}" && fail "the restored directory still names node a"
expect_eq "$(health_field b node_id)" b "node_id of the restored node"
pass
