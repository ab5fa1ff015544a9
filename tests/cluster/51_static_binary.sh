#!/usr/bin/env bash
# The static build: no dynamic section, no interpreter, and it serves.
source "$(dirname "$0")/lib.sh"

STATIC=${KVS_STATIC_BIN:-$ROOT/target/x86_64-unknown-linux-gnu/release/kvs}
if [ ! -x "$STATIC" ]; then
  "$ROOT/scripts/build-static.sh" > "$WORK/build.log" 2>&1 || { tail -20 "$WORK/build.log" >&2; fail "scripts/build-static.sh failed"; }
fi
command -v file > /dev/null || fail "file(1) is missing (.ci/run installs it)"
command -v readelf > /dev/null || fail "readelf is missing (.ci/run installs binutils)"

file "$STATIC" | grep -q 'statically linked' || fail "file says: $(file "$STATIC")"
readelf -d "$STATIC" 2>&1 | grep -q 'There is no dynamic section' || fail "the binary has a dynamic section"
readelf -l "$STATIC" | grep -q 'interpreter' && fail "the binary asks for a dynamic loader"
size=$(stat -c %s "$STATIC")
step "static binary: $size bytes"
[ "$size" -lt $((6 * 1024 * 1024)) ] || fail "the static binary is over 6 MB ($size bytes; DESIGN §8: under 6 MB with rustls)"

KVS_BIN=$STATIC start_node s
wait_healthy s
put s static/ok '"yes"'
expect_eq "$(get s static/ok)" '"yes"' "a value through the static binary"
pass
