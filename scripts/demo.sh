#!/usr/bin/env bash
# A local multi-node WireGuard mesh on weft-wg, no cluster needed: NODES hosts
# (network namespaces) on a shared "internet" bridge, each running weft-wg as a
# full mesh with every other, then a reachability table (from, to, RTT) over
# the encrypted tunnel, a short TCP throughput check, and `wg show` from one
# node. Everything is removed on exit, even on Ctrl-C.
#
#   sudo scripts/demo.sh [NODES]      (default 4, at most 20)
#   sudo scripts/demo.sh --keep       leave it running until Enter is pressed
set -euo pipefail

NODES=4 KEEP=0
for a in "$@"; do
    case $a in
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) [[ $a =~ ^[0-9]+$ && $a -ge 2 && $a -le 20 ]] || { echo "NODES must be 2..20" >&2; exit 2; }; NODES=$a ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "needs root (network namespaces, TUN)" >&2; exit 1; }
for tool in wg ip ping; do
    command -v $tool >/dev/null || { echo "missing $tool: apt-get install --no-install-recommends wireguard-tools iproute2 iputils-ping" >&2; exit 1; }
done
root=$(cd "$(dirname "$0")/.." && pwd)
WEFT=$root/target/release/weft-wg
if [[ ! -x $WEFT ]]; then
    echo "building weft-wg (cargo build --release -p dataplane) ..."
    (cd "$root" && cargo build --release -p dataplane -q)
fi

tag=wd$$
WAN=${tag}wan
keydir=$(mktemp -d); chmod 700 "$keydir"
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
    for i in $(seq "$NODES"); do ip netns del ${tag}n$i 2>/dev/null || true; done
    ip netns del "$WAN" 2>/dev/null || true
    rm -rf "$keydir"
}
trap cleanup EXIT INT TERM

echo "== creating $NODES nodes on a shared 'internet' (203.0.113.0/24, inside namespaces)"
ip netns add "$WAN"
ip -n "$WAN" link add br0 type bridge
ip -n "$WAN" link set br0 up
for i in $(seq "$NODES"); do
    ns=${tag}n$i
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add ${tag}e$i netns "$ns" type veth peer name p$i netns "$WAN"
    ip -n "$WAN" link set p$i master br0 up
    ip -n "$ns" addr add 203.0.113.$i/24 dev ${tag}e$i
    ip -n "$ns" link set ${tag}e$i up
    wg genkey > "$keydir/$i"
    wg pubkey < "$keydir/$i" > "$keydir/$i.pub"
    ip netns exec "$ns" "$WEFT" -f ${tag}w$i >/dev/null 2>&1 &
    PIDS+=($!)
done
for i in $(seq "$NODES"); do
    for _ in $(seq 100); do [[ -S /var/run/wireguard/${tag}w$i.sock ]] && break; sleep 0.05; done
done

echo "== configuring the full mesh (10.4.0.0/16) with wg"
for i in $(seq "$NODES"); do
    ns=${tag}n$i
    args=(set ${tag}w$i private-key "$keydir/$i" listen-port 51820)
    for j in $(seq "$NODES"); do
        [[ $i == "$j" ]] && continue
        args+=(peer "$(cat "$keydir/$j.pub")" allowed-ips 10.4.0.$j/32 endpoint 203.0.113.$j:51820 persistent-keepalive 25)
    done
    ip netns exec "$ns" wg "${args[@]}"
    ip -n "$ns" addr add 10.4.0.$i/16 dev ${tag}w$i
    ip -n "$ns" link set ${tag}w$i up
done

echo "== reachability over the encrypted mesh"
printf '%-10s %-10s %-12s %s\n' from to path "rtt (ms)"
fail=0
for i in $(seq "$NODES"); do
    for j in $(seq "$NODES"); do
        [[ $i == "$j" ]] && continue
        out=$(ip netns exec ${tag}n$i ping -c 3 -i 0.2 -W 2 10.4.0.$j 2>/dev/null || true)
        rtt=$(awk -F'/' '/rtt/ {print $5}' <<< "$out")
        if [[ -n $rtt ]]; then
            printf '%-10s %-10s %-12s %s\n' node$i node$j encrypted "$rtt"
        else
            printf '%-10s %-10s %-12s %s\n' node$i node$j encrypted UNREACHABLE; fail=1
        fi
    done
done

if command -v iperf3 >/dev/null; then
    echo "== TCP throughput node1 -> node2 through the tunnel (3 s)"
    ip netns exec ${tag}n2 iperf3 -s -D -1 >/dev/null 2>&1; sleep 0.3
    ip netns exec ${tag}n1 iperf3 -c 10.4.0.2 -t 3 -f m 2>/dev/null | awk '/receiver/ {print "   " $(NF-2), $(NF-1)}'
fi

echo "== wg show on node1"
ip netns exec ${tag}n1 wg show ${tag}w1

if (( KEEP )); then
    echo; echo "running; try: sudo ip netns exec ${tag}n1 ping 10.4.0.2   (Enter to tear down)"
    read -r _ || true
fi
echo "== tearing down"
exit $fail
