#!/usr/bin/env bash
# The one test command: formatting, lints, `cargo test`, then every shell
# cluster test in tests/cluster/ against a release build. Ends with one line:
# "N passed, N failed".
set -u
cd "$(dirname "$0")/.."

passed=0
failed=0
failures=()

record() { # record NAME RESULT
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$1"); fi
}

echo "== cargo fmt --check"
cargo fmt --check; record "cargo fmt --check" $?

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings; record "cargo clippy" $?

# The cluster tests run the static release binary, the one users deploy.
echo "== scripts/build-static.sh"
if ! scripts/build-static.sh; then
  echo "static release build failed"; echo "$passed passed, $((failed + 1)) failed"; exit 1
fi
export KVS_BIN="$PWD/target/x86_64-unknown-linux-gnu/release/kvs"
export KVS_STATIC_BIN="$KVS_BIN"

echo "== cargo test (kvs, then the vendored tiny_http's unit tests)"
out=$(mktemp)
cargo test 2>&1 | tee "$out"
test_rc=${PIPESTATUS[0]}
cargo test -p tiny_http --lib 2>&1 | tee -a "$out"
[ "${PIPESTATUS[0]}" -eq 0 ] || test_rc=1
# Count Rust tests one by one from cargo's summaries.
while read -r ok bad; do
  passed=$((passed + ok)); failed=$((failed + bad))
done < <(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$out")
if [ "$test_rc" -ne 0 ] && ! grep -q '^test result: FAILED' "$out"; then
  failed=$((failed + 1)); failures+=("cargo test (did not run to the end)")
elif grep -q '^test result: FAILED' "$out"; then
  failures+=("cargo test")
fi
rm -f "$out"

for t in tests/cluster/[0-9]*.sh; do
  echo "== $t"
  start=$SECONDS
  if timeout 600 bash "$t"; then rc=0; else rc=$?; fi
  echo "   ($((SECONDS - start))s)"
  record "$t" "$rc"
done

if [ "${#failures[@]}" -gt 0 ]; then
  echo "failed:"; printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
