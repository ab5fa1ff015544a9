#!/usr/bin/env bash
# etc/kvs.service passes `systemd-analyze verify` (where systemd-analyze is
# installed; .ci/run installs systemd), with ExecStart pointed at this build.
source "$(dirname "$0")/lib.sh"

if ! command -v systemd-analyze > /dev/null; then
  echo "skip: systemd-analyze is not installed"
  pass; exit 0
fi
sed "s|/usr/local/bin/kvs|$KVS_BIN|" "$ROOT/etc/kvs.service" > "$WORK/kvs.service"
out=$(systemd-analyze verify "$WORK/kvs.service" 2>&1) || fail "systemd-analyze verify failed: $out"
echo "$out" | grep -i 'kvs.service' | grep -vi 'user.*kvs\|group.*kvs' && fail "warnings about the unit: $out"
grep -q '^KillSignal=SIGTERM' "$ROOT/etc/kvs.service" || fail "the unit does not stop with SIGTERM"
grep -q '^Restart=on-failure' "$ROOT/etc/kvs.service" || fail "the unit does not restart on failure"
pass
