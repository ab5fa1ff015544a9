#!/usr/bin/env bash
# After a 200 or 204, kill -9 loses nothing: 8 concurrent clients write 640
# keys (and delete some), the node is killed with SIGKILL while they run,
# restarted, and every acknowledged write is there.
source "$(dirname "$0")/lib.sh"

start_node a
wait_healthy a

writer() { # writer ID: 80 PUTs, log each acknowledged key
  local id=$1 i code
  for i in $(seq 1 80); do
    code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -X PUT \
      --data-binary "{\"client\":$id,\"i\":$i}" "$(url a "/kv/c$id/k$i")") || true
    [ "$code" = 200 ] && echo "c$id/k$i {\"client\":$id,\"i\":$i}" >> "$WORK/acked.$id"
    if [ "$code" = 200 ] && [ $((i % 10)) -eq 0 ]; then
      code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -X DELETE "$(url a "/kv/c$id/k$((i - 1))")") || true
      [ "$code" = 204 ] && echo "c$id/k$((i - 1))" >> "$WORK/deleted.$id"
    fi
  done
}
pids=()
for id in $(seq 1 8); do writer "$id" & pids+=($!); done
# Kill the node mid-flight, once a good part of the writes is acknowledged.
wait_until 60 "200 acknowledged writes" bash -c "[ \$(cat $WORK/acked.* 2>/dev/null | wc -l) -ge 200 ]"
kill9_node a
for p in "${pids[@]}"; do wait "$p" || true; done
acked=$(cat "$WORK"/acked.* | wc -l)
step "$acked writes acknowledged before SIGKILL"
[ "$acked" -ge 200 ] || fail "too few writes acknowledged: $acked"

start_node a
wait_healthy a
missing=0
cat "$WORK"/deleted.* 2>/dev/null | sort -u > "$WORK/deleted" || true
while read -r key value; do
  if grep -qx "$key" "$WORK/deleted"; then continue; fi
  got=$(get a "$key")
  [ "$got" = "$value" ] || { echo "lost: $key (got '$got')" >&2; missing=$((missing + 1)); }
done < <(cat "$WORK"/acked.*)
while read -r key; do
  [ "$(status GET "$(url a "/kv/$key")")" = 404 ] || { echo "delete lost: $key" >&2; missing=$((missing + 1)); }
done < "$WORK/deleted"
[ "$missing" -eq 0 ] || fail "$missing acknowledged writes lost after kill -9"

step "a second round: 500 PUTs from 10 clients, all acknowledged, then kill -9"
rm -f "$WORK"/acked.*
pids=()
for id in $(seq 11 20); do
  ( for i in $(seq 1 50); do
      code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -X PUT --data-binary "$i" "$(url a "/kv/r$id/$i")")
      [ "$code" = 200 ] && echo "r$id/$i $i" >> "$WORK/acked.$id"
    done ) & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
kill9_node a
expect_eq "$(cat "$WORK"/acked.* | wc -l | tr -d ' ')" 500 "acknowledged writes"
start_node a
wait_healthy a
while read -r key value; do
  [ "$(get a "$key")" = "$value" ] || fail "lost $key after kill -9"
done < <(cat "$WORK"/acked.*)
pass
