#!/usr/bin/env bash
# Five nodes joined through one seed all come to know each other.
source "$(dirname "$0")/lib.sh"

start_node n1 "${FAST[@]}"
wait_healthy n1
for n in n2 n3 n4 n5; do start_node "$n" $(seeds n1) "${FAST[@]}"; done
for n in n2 n3 n4 n5; do wait_healthy "$n"; done
count_is() { [ "$(member_count "$1")" = "$2" ]; }
for n in n1 n2 n3 n4 n5; do wait_until 10 "$n knows all 5" count_is "$n" 5; done
for n in n1 n2 n3 n4 n5; do
  ids=$(curl -s --max-time 2 "$(url "$n" /members/)" | grep -o '"id":"n[0-9]"' | sort -u | wc -l)
  expect_eq "$ids" 5 "distinct members listed by $n"
done
pass
