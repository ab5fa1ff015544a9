#!/usr/bin/env bash
# A backup downloaded slowly holds no HTTP worker: with one worker thread,
# the node keeps answering reads and writes while a client takes its backup
# at a trickle; a second backup meanwhile is 503; once the slow client goes
# away, the next backup runs and is whole.
source "$(dirname "$0")/lib.sh"

start_node a --http-threads 1
wait_ready a

step "a 16 MB store (more than the socket buffers hold)"
python3 - "$WORK/big.json" << 'PY'
import sys
open(sys.argv[1], "w").write('"' + "abcdefgh" * (128 * 1024 // 8) + '"')
PY
for i in $(seq 1 128); do
  [ "$i" = 1 ] || echo next
  echo "url = \"$(url a "/kv/big/$i")\""
  echo 'request = "PUT"'
  echo "data-binary = \"@$WORK/big.json\""
  echo 'output = "/dev/null"'
  echo 'write-out = "%{http_code}\n"'
done > "$WORK/load.cfg"
bad=$(curl -s -K "$WORK/load.cfg" | grep -vc '^200$' || true)
expect_eq "$bad" 0 "failed writes"

step "a backup read at 64 KB/s"
curl -s --limit-rate 64K -o "$WORK/slow.mdb" "$(url a /backup)" &
NODE_PID[slow]=$!
started() { [ -s "$WORK/slow.mdb" ]; }
wait_until 10 "the slow download started" started

step "meanwhile, the one worker still serves"
for i in 1 2 3; do
  expect_status 200 GET "$(url a /health)"
  expect_status 200 PUT "$(url a "/kv/during/$i")" -d "{\"i\":$i}"
  expect_eq "$(curl -s --max-time 5 "$(url a "/kv/during/$i")")" "{\"i\":$i}" "during/$i"
done
expect_status 503 GET "$(url a /backup)"
kill -0 "${NODE_PID[slow]}" 2> /dev/null || fail "the slow download ended already: the test proves nothing"

step "the slow client goes away; the next backup is whole"
kill "${NODE_PID[slow]}"; wait "${NODE_PID[slow]}" 2> /dev/null || true; unset 'NODE_PID[slow]'
got_backup() { [ "$(curl -s --max-time 20 -o "$WORK/fast.mdb" -w '%{http_code}' "$(url a /backup)")" = 200 ]; }
wait_until 20 "a backup once the slow one is gone" got_backup
"$KVS_BIN" restore "$WORK/fast.mdb" "$WORK/b" > /dev/null || fail "the backup does not restore"
"$KVS_BIN" verify "$WORK/b" > "$WORK/verify.out" || fail "the restored copy does not verify: $(cat "$WORK/verify.out")"
grep -q "^ok: 131 versions" "$WORK/verify.out" || fail "the copy does not hold 131 keys: $(cat "$WORK/verify.out")"
pass
