#!/usr/bin/env bash
# TTL: a value PUT with ?ttl=2 on one node replicates with its expiry
# (X-Kvs-Expires on both), reads and listings drop it once expired, and
# both nodes turn it into the very same tombstone (timestamp and uuid) by
# themselves; a PUT without ttl clears an expiry; ttl=0.5 expires in half a
# second; bad ttls (negative, NaN, too long) are refused.
source "$(dirname "$0")/lib.sh"

start_pair a b
expires_of() { curl -s -D - -o /dev/null "$(url "$1" "/kv/$2")" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-kvs-expires" {print $2}'; }
index_of() { curl -s -D - -o /dev/null "$1" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-kvs-index" {print $2}'; }
ia=$(index_of "$(url a /kv/sess/?keys)")
ib=$(index_of "$(url b /kv/sess/?keys)")

step "PUT ?ttl=2 on a: on both nodes with the same expiry"
expect_status 200 PUT "$(url a "/kv/sess/1?ttl=2")" --data-binary '{"user":"ann"}'
expect_status 200 PUT "$(url a "/kv/sess/keep?ttl=2")" --data-binary '{"user":"bob"}'
put a sess/keep '{"user":"bob","ttl":"cleared"}'
wait_until 5 "sess/1 on b" has_value b sess/1 '{"user":"ann"}'
ea=$(expires_of a sess/1); eb=$(expires_of b sess/1)
[ -n "$ea" ] || fail "no X-Kvs-Expires on a"
expect_eq "$eb" "$ea" "X-Kvs-Expires on b"
[ -z "$(expires_of a sess/keep)" ] || fail "a PUT without ttl kept the expiry"

step "expired: gone from reads and listings on both"
for n in a b; do wait_until 5 "sess/1 expires on $n" lacks_key "$n" sess/1; done
for n in a b; do
  expect_eq "$(curl -s "$(url "$n" /kv/sess/?keys)")" '["sess/keep"]' "listing on $n"
  expect_eq "$(get "$n" sess/keep)" '{"user":"bob","ttl":"cleared"}' "sess/keep on $n"
done

step "one tombstone, made by each node itself"
tomb() { curl -s "$(url "$1" "/kv/sess/?changes&index=$2")" | grep -o '{"key":"sess/1","deleted":true,"timestamp":[0-9]*,"uuid":"[^"]*"'; }
expired_on() { [ -n "$(tomb "$1" "$2")" ]; }
wait_until 5 "a holds the expiry tombstone" expired_on a "$ia"
wait_until 5 "b holds the expiry tombstone" expired_on b "$ib"
ta=$(tomb a "$ia"); tb=$(tomb b "$ib")
expect_eq "$tb" "$ta" "the tombstone on b"
grep -q "\"timestamp\":$ea," <<<"$ta" || fail "the tombstone is not at the expiry time ($ea): $ta"
for n in a b; do [ "$(metric "$n" kvs_expired_total)" -ge 1 ] || fail "$n expired nothing itself"; done

step "a fractional ttl: 0.5 s"
t0=$(now_ms)
expect_status 200 PUT "$(url a "/kv/half?ttl=0.5")" --data-binary '"h"'
eh=$(expires_of a half)
[ -n "$eh" ] || fail "no X-Kvs-Expires for ttl=0.5"
# The expiry is the write's timestamp + 500 ms; the write happened after t0.
[ "$eh" -ge $((t0 + 500)) ] && [ "$eh" -le $(($(now_ms) + 500)) ] || fail "ttl=0.5 gave expiry $eh (written at about $t0)"
wait_until 5 "half expires on a" lacks_key a half

step "bad ttls"
for bad in 0 soon -1 NaN inf 1e3 0.0001 315360001; do
  expect_status 400 PUT "$(url a "/kv/x?ttl=$bad")" --data-binary 1
done
grep -q "ttl" <<<"$(curl -s -X PUT "$(url a "/kv/x?ttl=-1")" --data-binary 1)" || fail "the 400 does not name the ttl"
expect_status 400 DELETE "$(url a "/kv/x?ttl=5")"
lacks_key a x || fail "a refused ttl wrote the key"
pass
