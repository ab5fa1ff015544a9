#!/usr/bin/env bash
# Builds a fully static x86_64 kvs binary (glibc with crt-static) with the
# release profile (fat LTO, one codegen unit, stripped, panic=abort) and
# prints its path and size.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
# --target keeps build scripts dynamic; only the binary is static. A non-PIE
# executable has no dynamic section at all (a static-pie one keeps one to
# relocate itself).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
  cargo build --release --locked --target "$target"
bin="target/$target/release/kvs"
size=$(stat -c %s "$bin")
echo "static binary: $PWD/$bin"
echo "size: $size bytes ($(awk "BEGIN { printf \"%.2f\", $size / 1048576 }") MiB)"
if command -v file >/dev/null; then file "$bin"; fi
