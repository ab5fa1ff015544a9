#!/usr/bin/env bash
# DELETE /kv/{prefix}?recurse on a 2-node cluster: 500 keys under the
# prefix are deleted (200 {"deleted": 500}), keys outside it stay, the
# tombstones replicate, and a second run deletes nothing.
source "$(dirname "$0")/lib.sh"

start_pair a b
put_many a users/u 500
put a users "\"the key users itself\""
put a usersx '"next to the prefix"'
put a other/x '"kept"'
wait_until 20 "b has the 500 keys" bash -c "[ \"\$(curl -s '$(url b '/kv/users/?keys&limit=10000')' | grep -o '\"users/' | wc -l)\" = 500 ]"

step "delete users/ recursively on a"
reply=$(curl -s --max-time 30 -X DELETE "$(url a '/kv/users/?recurse')")
expect_eq "$reply" '{"deleted":500}' "reply of the recursive delete"
expect_eq "$(count_keys a users/)" 0 "keys left under users/ on a"
has_value a users "\"the key users itself\"" || fail "the key users (not under users/) was deleted"
has_value a usersx '"next to the prefix"' || fail "usersx was deleted"
has_value a other/x '"kept"' || fail "other/x was deleted"

step "the tombstones replicate"
wait_until 20 "b has no key under users/" bash -c "[ \"\$(curl -s '$(url b '/kv/users/?keys&limit=10000')' | grep -o '\"users/' | wc -l)\" = 0 ]"
has_value b other/x '"kept"' || fail "other/x is gone on b"
expect_status 404 GET "$(url b /kv/users/u1)"

step "a second recursive delete finds nothing"
expect_eq "$(curl -s --max-time 30 -X DELETE "$(url a '/kv/users/?recurse')")" '{"deleted":0}' "second run"

pass
