#!/usr/bin/env bash
# After a 200 or 204, kill -9 loses nothing. Eight concurrent clients write
# (and delete) while the node is killed with SIGKILL mid-flight; then ten
# clients write 500 keys, all acknowledged, and the node is killed again.
# After each restart every acknowledged write is there.
source "$(dirname "$0")/lib.sh"

start_node a
wait_healthy a

# client ID N: N PUTs of cID/kI (and a DELETE of every tenth key's
# predecessor), in one curl run whose status codes land in codes.ID.
client() {
  local id=$1 n=$2 i base
  base=$(url a "/kv/c$id/k")
  for i in $(seq 1 "$n"); do
    echo "PUT $base$i {\"client\":$id,\"i\":$i}"
    [ $((i % 10)) -eq 0 ] && echo "DELETE $base$((i - 1))"
  done > "$WORK/ops.$id"
  batch "$WORK/ops.$id" > "$WORK/codes.$id"
}
# check ID...: every acknowledged PUT is readable with its value and every
# acknowledged DELETE is gone. A key whose DELETE was sent but not answered
# may be either (the node may have died just after committing it).
check() {
  local id expected=0
  : > "$WORK/want"; : > "$WORK/gone"; : > "$WORK/listing"
  for id in "$@"; do
    paste -d' ' "$WORK/codes.$id" <(head -n "$(wc -l < "$WORK/codes.$id")" "$WORK/ops.$id") > "$WORK/done.$id"
    curl -s --max-time 10 "$(url a "/kv/$(awk 'NR == 1 {print $2}' "$WORK/ops.$id" | sed 's|.*/kv/||; s|/[^/]*$||')/?recurse&limit=10000")" \
      | sed 's/},{"key"/}\n{"key"/g' >> "$WORK/listing"
    awk '$2 == "DELETE" {sub(/.*\/kv\//, "", $3); print $3}' "$WORK/done.$id" > "$WORK/deleted_tries.$id"
    awk '$1 == 204 && $2 == "DELETE" {sub(/.*\/kv\//, "", $3); print "\"key\":\"" $3 "\","}' "$WORK/done.$id" >> "$WORK/gone"
    awk 'FILENAME == ARGV[1] {tried[$1] = 1; next}
         $1 == 200 && $2 == "PUT" {k = $3; sub(/.*\/kv\//, "", k); if (!(k in tried)) print "\"key\":\"" k "\",\"value\":" $4 ",\"timestamp\""}' \
      "$WORK/deleted_tries.$id" "$WORK/done.$id" >> "$WORK/want"
  done
  expected=$(sort -u "$WORK/want" | wc -l)
  found=$( (grep -oF -f "$WORK/want" "$WORK/listing" || true) | sort -u | wc -l)
  [ "$found" -eq "$expected" ] || fail "$((expected - found)) of $expected acknowledged PUTs lost after kill -9"
  if [ -s "$WORK/gone" ] && grep -qF -f "$WORK/gone" "$WORK/listing"; then
    fail "acknowledged DELETEs undone after kill -9: $(grep -oF -f "$WORK/gone" "$WORK/listing" | head -3)"
  fi
  step "checked $expected acknowledged PUTs and $(wc -l < "$WORK/gone") acknowledged DELETEs"
}
acked() { cat "$WORK"/codes.* 2> /dev/null | grep -Ec '^(200|204)$' || true; }

step "8 clients write while the node is killed"
pids=()
for id in $(seq 1 8); do client "$id" 150 & pids+=($!); done
wait_until 60 "300 acknowledged writes" bash -c "[ \$(cat $WORK/codes.* 2>/dev/null | grep -Ec '^(200|204)\$') -ge 300 ]"
kill9_node a
for p in "${pids[@]}"; do wait "$p" || true; done
n=$(acked)
step "$n writes acknowledged before SIGKILL"
start_node a
wait_healthy a
check $(seq 1 8)

step "10 clients write 500 keys, all acknowledged; kill -9; all there"
rm -f "$WORK"/codes.*
pids=()
for id in $(seq 11 20); do
  ( base=$(url a "/kv/r$id/"); for i in $(seq 1 50); do echo "PUT $base$i $i"; done > "$WORK/ops.$id"
    batch "$WORK/ops.$id" > "$WORK/codes.$id" ) & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
expect_eq "$(cat "$WORK"/codes.* | grep -c '^200$')" 500 "acknowledged writes"
kill9_node a
start_node a
wait_healthy a
check $(seq 11 20)
pass
