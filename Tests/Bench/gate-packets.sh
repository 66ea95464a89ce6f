#!/bin/bash
# The gate's cost per packet that no grant allows: UDP datagrams from an address without a grant to a managed port
# (dropped at the end of `gate`, after every grant-set lookup), through a veth pair between two namespaces this script
# creates and removes. Alternates two tables, the one in rules/drawbridge.nft of the working tree and the one of
# BASE_REVISION (default HEAD), and prints the time per datagram for IPv4 and IPv6 in each round, then the median
# ratio (tree / base): for weighing a change to the table's rules. The sender's time includes the receiver's, since
# veth delivers in the sender's softirq. Documentation addresses only; COUNT datagrams per family, table and round.
#
#   sudo bash Tests/Bench/gate-packets.sh [ROUNDS=6] [COUNT=300000] [BASE_REVISION=HEAD]
set -euo pipefail
rounds=${1:-6}
count=${2:-300000}
base=${3:-HEAD}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
host=dbgate-h$$
client=dbgate-c$$
cleanup() {
    ip netns del "$host" 2>/dev/null || true
    ip netns del "$client" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cc -O2 -o "$work/blast" "$here/gate-blast.c"
cp "$root/rules/drawbridge.nft" "$work/tree.nft"
git -C "$root" show "$base:rules/drawbridge.nft" > "$work/base.nft"

ip netns add "$host"
ip netns add "$client"
ip link add dbgate0 netns "$host" type veth peer name dbgate1 netns "$client"
for ns in "$host" "$client"; do ip -n "$ns" link set lo up; done
ip -n "$host" link set dbgate0 up
ip -n "$client" link set dbgate1 up
ip -n "$host" addr add 198.51.100.1/24 dev dbgate0
ip -n "$client" addr add 198.51.100.7/24 dev dbgate1
ip -n "$host" addr add 2001:db8:1::1/64 dev dbgate0 nodad
ip -n "$client" addr add 2001:db8:1::7/64 dev dbgate1 nodad
sleep 0.5

load() {
    ip netns exec "$host" nft flush ruleset
    ip netns exec "$host" nft -f "$1"
    ip netns exec "$host" nft add element inet drawbridge managed '{ udp . 9 }'
}
dropped() {
    ip netns exec "$host" nft list chain inet drawbridge gate | grep -o 'counter packets [0-9]*' | tail -1 | awk '{print $3}'
}

results="$work/results"
: > "$results"
# One unmeasured blast first: the first one of a run is slow (caches, neighbour entries).
load "$work/base.nft"
ip netns exec "$client" "$work/blast" 198.51.100.7 198.51.100.1 9 "$count" > /dev/null
for round in $(seq "$rounds"); do
    # Which table goes first alternates, so neither always meets the machine in the same state.
    order="base tree"
    if [ $((round % 2)) -eq 0 ]; then order="tree base"; fi
    for table in $order; do
        load "$work/$table.nft"
        v4=$(ip netns exec "$client" "$work/blast" 198.51.100.7 198.51.100.1 9 "$count")
        v6=$(ip netns exec "$client" "$work/blast" 2001:db8:1::7 2001:db8:1::1 9 "$count")
        echo "round $round $table: IPv4 $v4 ns, IPv6 $v6 ns per datagram ($(dropped) dropped by the gate)"
        echo "$round $table $v4 $v6" >> "$results"
    done
done
ip netns exec "$host" nft flush ruleset
median() { sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", v[int((NR + 1) / 2)] }'; }
ratios() {  # column $1 of each round: tree / base
    awk -v c="$1" '$2 == "base" { b[$1] = $c } $2 == "tree" { t[$1] = $c } END { for (r in t) print t[r] / b[r] }' "$results"
}
echo "median ratio, this tree / base, over $rounds rounds: IPv4 $(ratios 3 | median), IPv6 $(ratios 4 | median)"
