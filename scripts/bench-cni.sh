#!/usr/bin/env bash
# CNI latency benchmark: ADD and DEL through weft-cni and through the reference
# bridge + host-local plugins, same conflist shape (bridge, MTU 1420,
# host-local), interleaved in one run. Prints median and 90th percentile per
# command and the ratio weft-cni / reference.
#
#   sudo scripts/bench-cni.sh [-n ITERATIONS] [-b WEFT_CNI_BINARY]
#
# Everything happens in namespaces this script creates and removes on exit.
set -euo pipefail

N=50
WEFT=""
while getopts "n:b:h" opt; do
    case $opt in
        n) N=$OPTARG ;;
        b) WEFT=$OPTARG ;;
        *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "needs root" >&2; exit 1; }
root=$(cd "$(dirname "$0")/.." && pwd)
WEFT=${WEFT:-$root/target/release/weft-cni}
[[ -x $WEFT ]] || { echo "build first: cargo build --release -p cni-plugin" >&2; exit 1; }
REF=/usr/lib/cni
[[ -x $REF/bridge && -x $REF/host-local ]] || { echo "apt-get install --no-install-recommends containernetworking-plugins" >&2; exit 1; }

tag=cb$$
HOST=${tag}h
work=$(mktemp -d)
cleanup() {
    for i in $(seq "$N"); do
        ip netns del ${tag}w$i 2>/dev/null || true
        ip netns del ${tag}r$i 2>/dev/null || true
    done
    ip netns del "$HOST" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
ip netns add "$HOST"
mkdir -p "$work/bin"
cp "$WEFT" "$work/bin/weft-cni"
for p in bridge host-local; do ln -s "$REF/$p" "$work/bin/$p"; done
# Each plugin gets its own pods and its own bridge, so neither sees the other's state.
for i in $(seq "$N"); do ip netns add ${tag}w$i; ip netns add ${tag}r$i; done

conf() { # TYPE SUBNET
    printf '{"cniVersion":"1.0.0","name":"bench-%s","type":"%s","bridge":"br-%.6s","isDefaultGateway":true,"forceAddress":true,"mtu":1420,"ipam":{"type":"host-local","ranges":[[{"subnet":"%s"}]],"dataDir":"%s/ipam"}}' "$1" "$1" "$1" "$2" "$work"
}
conf weft-cni 10.71.0.0/24 > "$work/weft-cni.json"
conf bridge 10.70.0.0/24 > "$work/bridge.json"
pod_ns() { [[ $1 == bridge ]] && echo ${tag}r$2 || echo ${tag}w$2; }

# The timing loop runs inside the host namespace in one shell, so the cost of
# entering the namespace (ip netns exec remounts /sys) is not counted.
# Each line it prints: TYPE COMMAND MICROSECONDS.
{
    echo 'set -e'
    echo 'one() { local t0 t1; t0=$(date +%s%N)'
    echo "  CNI_COMMAND=\$2 CNI_CONTAINERID=\$3 CNI_IFNAME=eth0 CNI_NETNS=/var/run/netns/\$4 CNI_PATH=$work/bin $work/bin/\$1 < $work/\$1.json > /dev/null || { echo \"\$1 \$2 \$3 failed\" >&2; exit 1; }"
    echo '  t1=$(date +%s%N); echo "$1 $2 $(( (t1 - t0) / 1000 ))"; }'
    for cmd in ADD DEL; do
        for i in $(seq "$N"); do
            # Interleaved, so drift on a noisy machine hits both plugins alike.
            for type in weft-cni bridge; do
                echo "one $type $cmd $type-c$i $(pod_ns $type $i)"
            done
        done
    done
} > "$work/loop.sh"
ip netns exec "$HOST" bash "$work/loop.sh" > "$work/times"

stats() { sort -n | awk '{v[NR]=$1} END {p=int(NR*0.9); if (p<1) p=1; m=int((NR+1)/2); printf "%.1f %.1f", v[m]/1000, v[p]/1000}'; }
printf '%-22s %14s %14s %14s %14s\n' "plugin ($N pods)" "ADD median ms" "ADD p90 ms" "DEL median ms" "DEL p90 ms"
for type in weft-cni bridge; do
    read -r am ap <<< "$(awk -v t=$type '$1==t && $2=="ADD" {print $3}' "$work/times" | stats)"
    read -r dm dp <<< "$(awk -v t=$type '$1==t && $2=="DEL" {print $3}' "$work/times" | stats)"
    name=$type; [[ $type == bridge ]] && name="bridge+host-local"
    printf '%-22s %14s %14s %14s %14s\n' "$name" "$am" "$ap" "$dm" "$dp"
    eval "AM_${type//-/_}=$am DM_${type//-/_}=$dm"
done
awk -v a="$AM_weft_cni" -v b="$AM_bridge" -v c="$DM_weft_cni" -v d="$DM_bridge" \
    'BEGIN {printf "weft-cni / reference: ADD %.2fx, DEL %.2fx (lower is faster)\n", a/b, c/d}'
