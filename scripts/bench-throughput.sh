#!/usr/bin/env bash
# Throughput benchmark: iperf3 TCP (1 and 4 streams), UDP loss and ping RTT
# between two network namespaces, over raw veth and over each userspace
# WireGuard implementation, all in one run so the ratios are fair on a noisy
# machine. Prints a table and weft-wg's ratio to each other implementation.
#
#   sudo scripts/bench-throughput.sh [-t SECONDS] [-r RUNS] [-i IMPLS]
#
#   -t SECONDS  length of each iperf3 run (default 5)
#   -r RUNS     runs per measurement; the median is reported (default 3)
#   -i IMPLS    comma-separated: raw,weft,wireguard-go,gotatun,weft-nooffload
#               (default: raw,weft,wireguard-go, plus gotatun if installed)
#   -b BINARY   weft-wg binary (default target/release/weft-wg)
#
# gotatun, if wanted: cargo install --locked gotatun-cli --root /opt/gotatun
# (found on PATH or in /opt/gotatun/bin). All traffic stays inside the two
# namespaces this script creates; they are removed on exit, even on Ctrl-C.
set -euo pipefail

SECONDS_PER_RUN=5
RUNS=3
IMPLS=""
WEFT=""
while getopts "t:r:i:b:h" opt; do
    case $opt in
        t) SECONDS_PER_RUN=$OPTARG ;;
        r) RUNS=$OPTARG ;;
        i) IMPLS=$OPTARG ;;
        b) WEFT=$OPTARG ;;
        *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "needs root (network namespaces, TUN)" >&2; exit 1; }
for tool in iperf3 wg ip ping; do
    command -v $tool >/dev/null || { echo "missing $tool (apt-get install --no-install-recommends iperf3 wireguard-tools iproute2 iputils-ping)" >&2; exit 1; }
done
root=$(cd "$(dirname "$0")/.." && pwd)
WEFT=${WEFT:-$root/target/release/weft-wg}
[[ -x $WEFT ]] || { echo "build first: cargo build --release -p dataplane ($WEFT missing)" >&2; exit 1; }
GOTATUN=$(command -v gotatun || true)
[[ -z $GOTATUN && -x /opt/gotatun/bin/gotatun ]] && GOTATUN=/opt/gotatun/bin/gotatun
if [[ -z $IMPLS ]]; then
    IMPLS="raw,weft,wireguard-go"
    [[ -n $GOTATUN ]] && IMPLS="$IMPLS,gotatun"
fi

tag=wb$$
NA=${tag}a NB=${tag}b
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
    ip netns del "$NA" 2>/dev/null || true
    ip netns del "$NB" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ip netns add "$NA"; ip netns add "$NB"
ip -n "$NA" link set lo up; ip -n "$NB" link set lo up
ip link add ${tag}va netns "$NA" type veth peer name ${tag}vb netns "$NB"
ip -n "$NA" addr add 192.168.251.1/24 dev ${tag}va
ip -n "$NB" addr add 192.168.251.2/24 dev ${tag}vb
ip -n "$NA" link set ${tag}va up; ip -n "$NB" link set ${tag}vb up

KA=$(wg genkey); KB=$(wg genkey)
PA=$(echo "$KA" | wg pubkey); PB=$(echo "$KB" | wg pubkey)
keydir=$(mktemp -d); chmod 700 "$keydir"
echo "$KA" > "$keydir/a"; echo "$KB" > "$keydir/b"
trap 'cleanup; rm -rf "$keydir"' EXIT INT TERM

# start_tunnel IMPL: brings up wg interfaces in both namespaces; sets DST.
start_tunnel() {
    local impl=$1 bin env=() args=()
    case $impl in
        weft) bin=$WEFT ;;
        weft-nooffload) bin=$WEFT; env=(WEFT_WG_NO_OFFLOAD=1) ;;
        wireguard-go) bin=$(command -v wireguard-go) ;;
        gotatun) bin=$GOTATUN; args=(--disable-drop-privileges --log /dev/null) ;;
        *) echo "unknown implementation $impl" >&2; exit 2 ;;
    esac
    [[ -n $bin ]] || { echo "$impl is not installed" >&2; exit 1; }
    local i ns if side
    for side in a b; do
        ns=$NA; [[ $side == b ]] && ns=$NB
        if=${tag}$side
        ip netns exec "$ns" env "${env[@]}" "$bin" "${args[@]}" -f "$if" >/dev/null 2>&1 &
        PIDS+=($!)
        for i in $(seq 100); do [[ -S /var/run/wireguard/$if.sock ]] && break; sleep 0.05; done
        [[ -S /var/run/wireguard/$if.sock ]] || { echo "$impl did not start" >&2; exit 1; }
    done
    ip netns exec "$NA" wg set ${tag}a private-key "$keydir/a" listen-port 51820 \
        peer "$PB" allowed-ips 10.99.0.2/32 endpoint 192.168.251.2:51820
    ip netns exec "$NB" wg set ${tag}b private-key "$keydir/b" listen-port 51820 \
        peer "$PA" allowed-ips 10.99.0.1/32 endpoint 192.168.251.1:51820
    ip -n "$NA" addr add 10.99.0.1/24 dev ${tag}a; ip -n "$NA" link set ${tag}a mtu 1420 up
    ip -n "$NB" addr add 10.99.0.2/24 dev ${tag}b; ip -n "$NB" link set ${tag}b mtu 1420 up
    DST=10.99.0.2
    for i in $(seq 50); do ip netns exec "$NA" ping -c1 -W1 $DST >/dev/null 2>&1 && return; done
    echo "$impl: no ping through the tunnel" >&2; exit 1
}

stop_tunnel() {
    for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do [[ -n $p ]] && wait "$p" 2>/dev/null || true; done
    PIDS=()
    sleep 0.3
}

median() { sort -n | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else print v[int((NR+1)/2)]}'; }

# iperf_tcp STREAMS -> Mbit/s (receiver side), median of RUNS
iperf_tcp() {
    local r
    for r in $(seq "$RUNS"); do
        ip netns exec "$NA" iperf3 -c "$DST" -t "$SECONDS_PER_RUN" -P "$1" -f m 2>/dev/null \
            | awk '/receiver/ {v=$(NF-2)} END {print v+0}'
    done | median
}

# UDP at 1 Gbit/s offered: lost percentage at the receiver. $1 is extra
# iperf3 options, e.g. "-w 2M" for a 2 MiB receive buffer in the application.
iperf_udp() {
    local r
    for r in $(seq "$RUNS"); do
        ip netns exec "$NA" iperf3 -c "$DST" -u -b 1G -l 1300 $1 -t "$SECONDS_PER_RUN" 2>/dev/null \
            | awk '/receiver/ {for (i=1;i<=NF;i++) if ($i ~ /^\(.*%\)$/) {gsub(/[()%]/,"",$i); v=$i}} END {print v+0}'
    done | median
}

rtt() {
    ip netns exec "$NA" ping -c 50 -i 0.02 -q "$DST" 2>/dev/null \
        | awk -F'/' '/rtt|round-trip/ {print $5}'
}

rss_kb() {
    local total=0 p
    for p in "${PIDS[@]:-}"; do
        [[ -n $p && -r /proc/$p/status ]] || continue
        total=$((total + $(awk '/VmRSS/ {print $2}' /proc/$p/status)))
    done
    echo $((total / 2))
}

declare -A TCP1 TCP4 UDPL UDPW RTT RSS
ip netns exec "$NB" iperf3 -s -D --pidfile "$keydir/iperf.pid" >/dev/null 2>&1
sleep 0.3
IFS=, read -ra list <<< "$IMPLS"
echo "benchmark: ${SECONDS_PER_RUN}s per run, median of $RUNS; $(nproc) cores; $(uname -r)" >&2
for impl in "${list[@]}"; do
    echo "== $impl" >&2
    if [[ $impl == raw ]]; then
        DST=192.168.251.2; RSS[$impl]=-
    else
        start_tunnel "$impl"
        sleep 0.5
        RSS[$impl]=$(rss_kb)
    fi
    TCP1[$impl]=$(iperf_tcp 1);  echo "   tcp x1: ${TCP1[$impl]} Mbit/s" >&2
    TCP4[$impl]=$(iperf_tcp 4);  echo "   tcp x4: ${TCP4[$impl]} Mbit/s" >&2
    UDPL[$impl]=$(iperf_udp "");  echo "   udp 1G loss: ${UDPL[$impl]} %" >&2
    UDPW[$impl]=$(iperf_udp "-w 2M"); echo "   udp 1G loss, 2 MiB app buffer: ${UDPW[$impl]} %" >&2
    RTT[$impl]=$(rtt);           echo "   rtt: ${RTT[$impl]} ms" >&2
    [[ $impl == raw ]] || stop_tunnel
done
kill "$(cat "$keydir/iperf.pid")" 2>/dev/null || true

printf '\n%-16s %12s %12s %10s %10s %8s %10s\n' implementation "tcp x1 Mb/s" "tcp x4 Mb/s" "udp loss%" "(2M buf)" "rtt ms" "rss KiB"
for impl in "${list[@]}"; do
    printf '%-16s %12s %12s %10s %10s %8s %10s\n' "$impl" "${TCP1[$impl]}" "${TCP4[$impl]}" "${UDPL[$impl]}" "${UDPW[$impl]}" "${RTT[$impl]}" "${RSS[$impl]}"
done
echo "(udp: 1 Gbit/s offered, 1300-byte datagrams; rss: idle, per daemon)"
if [[ -n ${TCP1[weft]:-} ]]; then
    echo
    for impl in "${list[@]}"; do
        [[ $impl == weft ]] && continue
        awk -v w1="${TCP1[weft]}" -v o1="${TCP1[$impl]}" -v w4="${TCP4[weft]}" -v o4="${TCP4[$impl]}" -v n="$impl" \
            'BEGIN {printf "weft / %-14s tcp x1 %.2fx   tcp x4 %.2fx\n", n, (o1>0?w1/o1:0), (o4>0?w4/o4:0)}'
    done
fi
