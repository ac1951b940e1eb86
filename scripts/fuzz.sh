#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz, on the stable
# compiler: no sanitizer, so only `-C` flags are needed) of every parser that
# reads bytes from the network, the API, the UAPI socket or a file:
#
#   receive          WireGuard datagrams through dispatch, mac1 and the
#                    limiter, decryption, the inner packet and the coalescer
#   offload          TUN reads (virtio-net header + super-packet) cut into
#                    segments; decrypted packets coalesced
#   uapi             `wg set` request bodies and `get` replies
#   cni_config       the network configuration a runtime hands weft-cni
#   cluster_objects  Node and Peer JSON as the API server returns them
#   mesh_file        the mesh file of `--backend file`
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   scripts/fuzz.sh --build-only     # build the targets, run nothing
#
# Each target starts from its seed corpus in fuzz/corpus/TARGET (which also
# holds any input that once crashed: a regression test, run first) and
# writes what it finds to a temporary directory, so the tree stays clean.
# Runs as many targets at once as there are cores (WEFT_FUZZ_JOBS), each
# for its full time. Prints the executions per target; exits non-zero if any
# target crashed, with the input under fuzz/artifacts/TARGET/. Debug assertions and overflow
# checks are on.
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=false
if [[ ${1:-} == --build-only ]]; then
    build_only=true
    shift
fi
seconds=${1:-20}
shift || true
targets=("$@")
(( ${#targets[@]} )) || targets=(receive offload uapi cni_config cluster_objects mesh_file)

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
flags=(-s none -O -a --codegen-units 16)
work=$(mktemp -d /tmp/weft-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
build_start=$SECONDS
if ! cargo fuzz build "${flags[@]}" >"$work/build.log" 2>&1; then
    tail -n 30 "$work/build.log" >&2
    exit 1
fi
echo "fuzz targets built in $((SECONDS - build_start)) s"
$build_only && exit 0
# libFuzzer runs one process per target on one core: as many targets run
# at once as there are cores, each for its full time.
parallel=${WEFT_FUZZ_JOBS:-$(nproc)}
fuzz_one() {
    local t=$1 log="$work/$1.log"
    mkdir -p "$work/$t"
    if cargo fuzz run "${flags[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
        new=$(find "$work/$t" -type f | wc -l)
        echo "fuzz $t: ${runs:-?} executions in $seconds s, $cov, $new new inputs, no crash"
    else
        echo "fuzz $t: CRASH" >&2
        grep -E "panicked|ERROR|SUMMARY|Test unit written|artifacts/" "$log" | head -n 12 >&2
        return 1
    fi
}
pids=()
for t in "${targets[@]}"; do
    while (( $(jobs -rp | wc -l) >= parallel )); do
        wait -n || true
    done
    fuzz_one "$t" &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
exit $failed
