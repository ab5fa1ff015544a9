#!/usr/bin/env bash
# A full disk (a small tmpfs under the data directory): writes get 507 "no
# space left on device", never a 500 saying "corrupt"; reads go on; once
# space is freed, writes succeed again, in the same process. Skipped (with
# the reason) where the test cannot mount a tmpfs.
source "$(dirname "$0")/lib.sh"

mnt=$WORK/small
mkdir -p "$mnt"
if ! mount -t tmpfs -o size=8m tmpfs "$mnt" 2>/dev/null; then
  echo "skip: cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)"
  pass
  exit 0
fi
CLEANUP_FIRST+=("umount -l '$mnt'")
# A filler file to free later.
dd if=/dev/zero of="$mnt/filler" bs=1M count=3 status=none

new_node n1
NODE_DIR[n1]=$mnt/data
start_node n1 --map-size-mb 64 --max-value-bytes 600000
wait_healthy n1
pid=$(pid_of n1)
put n1 keep '{"kept":true}' || fail "the first write failed"

step "fill the disk with 500 KB values until a write is refused"
value="\"$(head -c 500000 /dev/zero | tr '\0' 'x')\""
printf '%s' "$value" > "$WORK/value.json"
code=200
for i in $(seq 1 40); do
  code=$(curl -s -o "$WORK/reply" -w '%{http_code}' --max-time 10 -X PUT \
    --data-binary @"$WORK/value.json" "$(url n1 "/kv/big/$i")")
  [ "$code" = 200 ] || break
done
expect_eq "$code" 507 "status of a write on a full disk"
grep -q 'no space left on device' "$WORK/reply" || fail "507 without 'no space left on device': $(cat "$WORK/reply")"
if grep -qi corrupt "$WORK/reply"; then fail "a full disk is reported as corruption: $(cat "$WORK/reply")"; fi

step "reads go on"
has_value n1 keep '{"kept":true}' || fail "keep is not readable on a full disk"
expect_eq "$(status GET "$(url n1 /kv/big/1)")" 200 "a value written before the disk filled"

step "space freed: writes succeed again, same process"
rm -f "$mnt/filler"
wait_until 10 "a write succeeds after space is freed" put n1 after '{"after":true}'
has_value n1 after '{"after":true}' || fail "the write after freeing space is not readable"
kill -0 "$pid" 2>/dev/null || fail "the node process is gone"
expect_eq "$(pid_of n1)" "$pid" "node pid"

pass
