#!/usr/bin/env bash
# Throughput benchmark between two network namespaces, every implementation
# in the same run, interleaved round by round so that the ratios are fair on
# a noisy machine. For each: iperf3 TCP with 1 and 4 streams, the bytes the
# two tunnel daemons move per CPU-second of theirs (from /proc, during the
# 1-stream run), UDP from an application sending 1392-byte datagrams (the
# largest that fit the 1420-byte tunnel MTU, no GSO from the application) at
# 1 and 2 Gbit/s with the receiver's default socket buffer, ping RTT and idle
# RSS. Prints medians and weft-wg's ratios to today's wireguard-go, with
# the ratios' spread round by round.
#
#   sudo scripts/bench-throughput.sh [-t SECONDS] [-r ROUNDS] [-i IMPLS] [-b BINARY] [-p DIR]
#
#   -t SECONDS  length of each iperf3 run (default 8)
#   -r ROUNDS   rounds; medians are reported (default 3)
#   -i IMPLS    comma-separated: raw, weft, wireguard-go (0.0.20231211 from
#               Debian's bookworm-backports: TUN TSO/GRO, UDP GSO/GRO),
#               wireguard-go-2022 (Debian stable's 0.0.20220316, no
#               offloads), gotatun, weft-nooffload, weft-wN (weft-wg
#               with N workers; weft alone runs one per core)
#               (default: raw,weft,wireguard-go,wireguard-go-2022, plus gotatun
#               if installed)
#   -b BINARY   weft-wg binary (default target/release/weft-wg)
#   -p DIR      profile both tunnel daemons with perf during the first
#               round's 1-stream run; writes DIR/IMPL.txt (the daemons' time
#               split into AEAD, kernel and other user space, in shares and
#               in ns per byte moved, then the top symbols, wireguard-go's
#               named from its Go function table) and DIR/IMPL.perf.data;
#               extra perf record options in WEFT_BENCH_PERF_ARGS (e.g.
#               "--call-graph dwarf,8192")
#
# wireguard-go 0.0.20231211 is fetched once with apt-get download from
# bookworm-backports into $WEFT_BENCH_CACHE (default /var/cache/weft-bench)
# and unpacked there with dpkg -x; the system's wireguard-go is never
# replaced. gotatun, if wanted: cargo install --locked gotatun-cli --root
# /opt/gotatun. All traffic stays inside the two namespaces this script
# creates; they are removed on exit, even on Ctrl-C.
set -euo pipefail

SECONDS_PER_RUN=8
ROUNDS=3
IMPLS=""
WEFT=""
PROFILE_DIR=""
while getopts "t:r:i:b:p:h" opt; do
    case $opt in
        t) SECONDS_PER_RUN=$OPTARG ;;
        r) ROUNDS=$OPTARG ;;
        i) IMPLS=$OPTARG ;;
        b) WEFT=$OPTARG ;;
        p) PROFILE_DIR=$OPTARG ;;
        *) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 2 ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "needs root (network namespaces, TUN)" >&2; exit 1; }
[[ -z $PROFILE_DIR ]] || command -v perf >/dev/null || { echo "-p needs perf (apt-get install --no-install-recommends linux-perf)" >&2; exit 1; }
for tool in iperf3 wg ip ping python3; do
    command -v $tool >/dev/null || { echo "missing $tool (apt-get install --no-install-recommends iperf3 wireguard-tools iproute2 iputils-ping python3)" >&2; exit 1; }
done
root=$(cd "$(dirname "$0")/.." && pwd)
WEFT=${WEFT:-$root/target/release/weft-wg}
[[ -x $WEFT ]] || { echo "build first: cargo build --release -p dataplane ($WEFT missing)" >&2; exit 1; }
GOTATUN=$(command -v gotatun || true)
[[ -z $GOTATUN && -x /opt/gotatun/bin/gotatun ]] && GOTATUN=/opt/gotatun/bin/gotatun
if [[ -z $IMPLS ]]; then
    IMPLS="raw,weft,wireguard-go,wireguard-go-2022"
    [[ -n $GOTATUN ]] && IMPLS="$IMPLS,gotatun"
fi

# Today's wireguard-go, from bookworm-backports, beside the system's.
WG_GO_VERSION=0.0.20231211-1~bpo12+1
CACHE=${WEFT_BENCH_CACHE:-/var/cache/weft-bench}
WG_GO_NEW=$CACHE/wireguard-go-$WG_GO_VERSION/usr/bin/wireguard-go
fetch_wireguard_go() {
    [[ -x $WG_GO_NEW ]] && return
    echo "fetching wireguard-go $WG_GO_VERSION from bookworm-backports into $CACHE" >&2
    local apt=$CACHE/apt
    mkdir -p "$apt/lists/partial" "$apt/archives/partial"
    echo "deb http://deb.debian.org/debian bookworm-backports main" > "$apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
                -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache::Archives=$apt/archives"
                -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" update -qq >/dev/null
    (cd "$apt" && apt-get "${opts[@]}" download "wireguard-go=$WG_GO_VERSION" >/dev/null)
    dpkg -x "$apt"/wireguard-go_*.deb "$CACHE/wireguard-go-$WG_GO_VERSION"
    [[ -x $WG_GO_NEW ]] || { echo "could not unpack wireguard-go $WG_GO_VERSION" >&2; exit 1; }
}
[[ ,$IMPLS, == *,wireguard-go,* ]] && fetch_wireguard_go

tag=wb$$
NA=${tag}a NB=${tag}b
PIDS=()
keydir=$(mktemp -d); chmod 700 "$keydir"
cleanup() {
    for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
    [[ -f $keydir/iperf.pid ]] && kill "$(cat "$keydir/iperf.pid")" 2>/dev/null || true
    ip netns del "$NA" 2>/dev/null || true
    ip netns del "$NB" 2>/dev/null || true
    rm -rf "$keydir"
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
echo "$KA" > "$keydir/a"; echo "$KB" > "$keydir/b"

# start_tunnel IMPL: brings up wg interfaces in both namespaces; sets DST,
# and BIN to the daemon's binary.
start_tunnel() {
    local impl=$1 bin env=() args=()
    case $impl in
        weft) bin=$WEFT ;;
        weft-nooffload) bin=$WEFT; env=(WEFT_WG_NO_OFFLOAD=1) ;;
        weft-w[0-9]*) bin=$WEFT; env=(WEFT_WG_WORKERS=${impl#weft-w}) ;;
        wireguard-go) bin=$WG_GO_NEW ;;
        wireguard-go-2022) bin=$(command -v wireguard-go) ;;
        gotatun) bin=$GOTATUN; args=(--disable-drop-privileges --log /dev/null) ;;
        *) echo "unknown implementation $impl" >&2; exit 2 ;;
    esac
    [[ -n $bin ]] || { echo "$impl is not installed" >&2; exit 1; }
    BIN=$bin
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

# CPU ticks (user + system) of the tunnel daemons so far.
daemon_ticks() {
    local total=0 p
    for p in "${PIDS[@]:-}"; do
        [[ -n $p && -r /proc/$p/stat ]] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo $total
}

# Runs iperf3 in the client namespace and prints what the Python snippet $1
# makes of its JSON. iperf3 sometimes fails a run (its server still busy
# with the previous one, a control connection lost on a loaded machine): such
# a run is reported and tried again, twice at most, so that one bad run does
# not end the benchmark.
iperf_run() {
    local parse=$1 try out; shift
    for try in 1 2 3; do
        if out=$(ip netns exec "$NA" iperf3 -c "$DST" -t "$SECONDS_PER_RUN" -J "$@" 2>/dev/null \
            | python3 -c "$parse"); then
            echo "$out"
            return
        fi
        echo "   iperf3 $* failed (try $try of 3)" >&2
        sleep 1
    done
    echo "iperf3 $* failed three times" >&2
    exit 1
}

# iperf3 TCP with $1 streams; prints "Mbit/s bytes" (receiver side).
tcp_run() {
    iperf_run 'import json,sys
r=json.load(sys.stdin)
if "error" in r: sys.exit(r["error"])
r=r["end"]["sum_received"]
print("%.0f %d" % (r["bits_per_second"]/1e6, r["bytes"]))' -P "$1"
}

# iperf3 UDP, 1392-byte datagrams at $1 (e.g. 1G); prints "received-Mbit/s loss-%".
udp_run() {
    iperf_run 'import json,sys
r=json.load(sys.stdin)
if "error" in r: sys.exit(r["error"])
e=r["end"]
s=e.get("sum_received") or e["sum"]
lost=e["sum"].get("lost_percent", 0.0)
print("%.0f %.2f" % (s["bits_per_second"]*(1-lost/100)/1e6 if "sum_received" not in e else s["bits_per_second"]/1e6, lost))' -u -b "$1" -l 1392
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

# What perf saw of IMPL's daemons: their time split into the AEAD, the
# kernel and the rest of user space, per byte moved ($2 ns of the daemons'
# CPU per byte, from /proc), then the top symbols (wireguard-go's named from
# its Go function table: it ships stripped).
profile_report() {
    local data=$PROFILE_DIR/$1.perf.data go=()
    [[ $1 == wireguard-go* ]] && go=(--go-binary "$BIN")
    echo "# $1: both tunnel daemons during the 1-stream TCP run (perf record -F 1999)"
    perf report -i "$data" --stdio --no-children -n --sort dso,sym -g none 2>/dev/null \
        | python3 "$root/scripts/profile-split.py" "${go[@]}" --ns-per-byte "$2" --top 40
}

median() { sort -n | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else print v[int((NR+1)/2)]}'; }

declare -A R   # R[impl,metric] = space-separated values over rounds
add() { R[$1,$2]="${R[$1,$2]:-} $3"; }
med() { echo ${R[$1,$2]:-} | tr ' ' '\n' | grep -v '^$' | median; }

HZ=$(getconf CLK_TCK)
ip netns exec "$NB" iperf3 -s -D --pidfile "$keydir/iperf.pid" >/dev/null 2>&1
sleep 0.3
IFS=, read -ra list <<< "$IMPLS"
echo "benchmark: ${SECONDS_PER_RUN}s per run, $ROUNDS interleaved rounds, medians; $(nproc) cores; $(uname -r)" >&2
for round in $(seq "$ROUNDS"); do
    for impl in "${list[@]}"; do
        echo "== round $round: $impl" >&2
        if [[ $impl == raw ]]; then
            DST=192.168.251.2
        else
            start_tunnel "$impl"
            sleep 0.5
            add "$impl" rss "$(rss_kb)"
        fi
        profiler=""
        if [[ -n $PROFILE_DIR && $round == 1 && $impl != raw ]]; then
            mkdir -p "$PROFILE_DIR"
            perf record -q -F 1999 ${WEFT_BENCH_PERF_ARGS:-} -o "$PROFILE_DIR/$impl.perf.data" -p "$(IFS=,; echo "${PIDS[*]}")" \
                -- sleep "$((SECONDS_PER_RUN - 1))" >/dev/null 2>&1 &
            profiler=$!
        fi
        t0=$(daemon_ticks)
        read -r mbit bytes < <(tcp_run 1)
        t1=$(daemon_ticks)
        # The daemons' CPU against the bytes moved, both ways round: MB per
        # CPU-second of both daemons together, and CPU ns per byte.
        read -r eff ns_per_byte < <(awk -v b="$bytes" -v t=$((t1 - t0)) -v hz="$HZ" \
            'BEGIN {s = t / hz; printf "%.0f %.3f\n", (s > 0 ? b / 1e6 / s : 0), (b > 0 ? s * 1e9 / b : 0)}')
        if [[ -n $profiler ]]; then
            wait "$profiler" || true
            profile_report "$impl" "$ns_per_byte" > "$PROFILE_DIR/$impl.txt"
        fi
        add "$impl" tcp1 "$mbit"
        [[ $impl == raw ]] || add "$impl" eff "$eff"
        read -r mbit _ < <(tcp_run 4); add "$impl" tcp4 "$mbit"
        read -r mbit loss < <(udp_run 1G); add "$impl" udp1 "$mbit"; add "$impl" udp1l "$loss"
        read -r mbit loss < <(udp_run 2G); add "$impl" udp2 "$mbit"; add "$impl" udp2l "$loss"
        add "$impl" rtt "$(rtt)"
        echo "   tcp x1 $(echo ${R[$impl,tcp1]} | awk '{print $NF}') Mb/s, x4 $(echo ${R[$impl,tcp4]} | awk '{print $NF}'), udp 1G loss $(echo ${R[$impl,udp1l]} | awk '{print $NF}') %, 2G loss $(echo ${R[$impl,udp2l]} | awk '{print $NF}') %" >&2
        [[ $impl == raw ]] || stop_tunnel
    done
done

printf '\n%-18s %9s %9s %11s %17s %17s %8s %9s\n' implementation "tcp x1" "tcp x4" "MB/CPU-s" "udp 1G rx (loss)" "udp 2G rx (loss)" "rtt ms" "rss KiB"
for impl in "${list[@]}"; do
    printf '%-18s %9s %9s %11s %17s %17s %8s %9s\n' "$impl" "$(med "$impl" tcp1)" "$(med "$impl" tcp4)" \
        "$(med "$impl" eff)" "$(med "$impl" udp1) ($(med "$impl" udp1l)%)" "$(med "$impl" udp2) ($(med "$impl" udp2l)%)" \
        "$(med "$impl" rtt)" "$(med "$impl" rss)"
done
echo "(Mbit/s; MB/CPU-s: bytes through the 1-stream run per CPU-second of both tunnel daemons; udp: received Mbit/s and loss, 1392-byte datagrams, default receive buffer; rss: idle, per daemon)"
if [[ -n ${R[weft,tcp1]:-} ]]; then
    echo
    for impl in "${list[@]}"; do
        [[ $impl == weft || $impl == raw ]] && continue
        awk -v w1="$(med weft tcp1)" -v o1="$(med "$impl" tcp1)" -v w4="$(med weft tcp4)" -v o4="$(med "$impl" tcp4)" \
            -v we="$(med weft eff)" -v oe="$(med "$impl" eff)" -v n="$impl" \
            'BEGIN {printf "weft / %-18s tcp x1 %.2fx   tcp x4 %.2fx   bytes per CPU-second %.2fx\n", n, (o1>0?w1/o1:0), (o4>0?w4/o4:0), (oe>0?we/oe:0)}'
        # The spread of the same ratios round by round (each round ran both
        # back to back), to tell a real gap from the machine's noise.
        ((ROUNDS > 1)) || continue
        spread() {
            awk -v w="${R[weft,$1]:-}" -v o="${R[$impl,$1]:-}" 'BEGIN {
                n = split(w, a, " "); split(o, b, " "); lo = ""; hi = ""
                for (i = 1; i <= n; i++) if (b[i] > 0) {
                    r = a[i] / b[i]; if (lo == "" || r < lo) lo = r; if (hi == "" || r > hi) hi = r
                }
                if (lo == "") printf "-"; else printf "%.2f-%.2fx", lo, hi
            }'
        }
        printf '  per round               tcp x1 %s  tcp x4 %s  bytes per CPU-second %s\n' \
            "$(spread tcp1)" "$(spread tcp4)" "$(spread eff)"
    done
fi
