#!/usr/bin/env bash
# README command 1: a local multi-cloud Weft mesh in network namespaces, no
# cluster needed. Builds the binaries if needed, then runs `weft-lab up`:
# 4 nodes in 3 locations (two on one private subnet, one behind NAT with a
# forced endpoint), each running weft-agent with its userspace WireGuard
# tunnel (weft-wg) and a pod wired by weft-cni; it proves pod-to-pod and
# pod-to-node reachability, prints the table and the graph, and tears down.
#
#   sudo scripts/demo.sh              run, check, tear down
#   sudo scripts/demo.sh --keep       stay up until Enter / Ctrl-C
#   sudo scripts/demo.sh --dual-stack IPv4 and IPv6 pods, gcp on an IPv6-only
#                                     underlay (combines with --keep)
#   sudo scripts/demo.sh down         remove leftovers of an interrupted run
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "needs root (network namespaces, TUN, routes): sudo $0 $*" >&2; exit 1; }
missing=()
for tool in ip ping iptables; do command -v $tool >/dev/null || missing+=($tool); done
if (( ${#missing[@]} )); then
    echo "installing iproute2 iputils-ping iptables" >&2
    apt-get install -y -q --no-install-recommends iproute2 iputils-ping iptables >/dev/null
fi
bins=(weft-lab weft-agent weft-cni weft-wg)
for b in "${bins[@]}"; do
    if [[ ! -x $root/target/release/$b ]]; then
        echo "building (cargo build --release --workspace) ..." >&2
        (cd "$root" && cargo build --release --workspace --bins -q)
        break
    fi
done
[[ ${1:-} == up ]] && shift
case ${1:-} in
    down) exec "$root/target/release/weft-lab" down ;;
    ""|--keep|--dual-stack)
        for a in "$@"; do
            [[ $a == --keep || $a == --dual-stack ]] || { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
        done
        exec "$root/target/release/weft-lab" up "$@" ;;
    *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
