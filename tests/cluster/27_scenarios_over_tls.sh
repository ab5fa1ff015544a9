#!/usr/bin/env bash
# The cluster scenarios once more over TLS (KVS_TLS=1 in lib.sh: HTTPS on
# every node, mutual TLS between peers): replication and catch-up,
# bootstrap (sync), conflicts settled by a vote of three, convergence,
# leaving.
source "$(dirname "$0")/lib.sh"
for t in 20_replication 21_bootstrap 31_conflict_three 32_convergence 12_leave; do
  step "$t over TLS"
  KVS_TLS=1 bash "$ROOT/tests/cluster/$t.sh" > "$WORK/$t.out" 2>&1 \
    || { tail -n 30 "$WORK/$t.out" >&2; fail "$t failed over TLS"; }
  grep -q "^ok: $t" "$WORK/$t.out" || fail "$t did not pass over TLS"
done
pass
