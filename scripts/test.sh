#!/usr/bin/env bash
# The test command: installs the system packages the tests use (Debian), then
# runs formatting and lint checks and the whole test suite, including the
# root-only tests against real wireguard-go, wg and wg-quick in network
# namespaces, and the alert rules under Debian's promtool. Those are marked
# #[ignore = "needs root: ..."] or "needs promtool ...": as root this
# script includes them; without root cargo lists them as ignored and this
# script says how many; under CI (CI=true) running without root is an error.
#
#   sudo scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(wireguard-tools wireguard-go iperf3 iproute2 iputils-ping containernetworking-plugins iptables prometheus)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        # Without --no-install-recommends, wireguard-tools pulls in a kernel.
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        echo "missing packages: ${missing[*]} (run as root to install them)" >&2
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi

# One profile for lint, tests and the binaries the runtime e2e uses, so that
# nothing is built twice (see [profile.ci] in Cargo.toml).
profile=ci
phase_start=$SECONDS
phase() {
    echo "== $1 (previous phase: $((SECONDS - phase_start)) s)"
    phase_start=$SECONDS
}
# The fuzz targets are a build of their own (instrumented, another
# workspace). It starts now, at the lowest priority, and takes the CPU the
# rest leaves idle: a build's serial stretches, and the tests, which mostly
# wait on the network in namespaces. The fuzz phase waits for it.
fuzz_seconds=${WEFT_FUZZ_SECONDS:-20}
fuzz_build_log=$(mktemp)
test_log=$(mktemp)
fuzz_build=
finish() {
    # A failed phase leaves no build behind (its own session: cargo and rustc with it).
    if [[ -n $fuzz_build ]]; then kill -- "-$fuzz_build" 2>/dev/null || true; fi
    rm -f "$fuzz_build_log" "$test_log"
}
trap finish EXIT
if [[ $fuzz_seconds != 0 ]]; then
    setsid nice -n 19 scripts/fuzz.sh --build-only >"$fuzz_build_log" 2>&1 &
    fuzz_build=$!
fi

phase rustfmt
cargo fmt --all -- --check
# Clippy lints the workspace's crates while they are built for the tests:
# clippy-driver is the workspace's compiler (as under `cargo clippy`) and
# warnings, clippy's included, are errors. A separate `cargo clippy` would
# check every dependency a second time. Dependencies cap their lints, so
# the flag changes nothing for them. The fuzz build (started above) and the
# fuzz phase run without these.
clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
if [[ ! -x $clippy_driver ]]; then
    echo "clippy-driver not found: rustup component add clippy" >&2
    exit 1
fi
export RUSTC_WORKSPACE_WRAPPER=$clippy_driver RUSTFLAGS="-D warnings"
phase "build and lint"
cargo build --workspace --all-targets --profile $profile
phase tests
if [[ $(id -u) == 0 ]]; then
    root_only=(-- --include-ignored)
elif [[ ${CI:-} == true ]]; then
    echo "CI runs the root-only tests: run this script as root" >&2
    exit 1
else
    root_only=()
fi
cargo test --workspace --profile $profile "${root_only[@]}" 2>&1 | tee "$test_log"
# One line for the whole suite, summed over every test binary's summary.
summary=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^(passed|failed|ignored);?$/) { k = $i; sub(";", "", k); n[k] += $(i - 1) } }
     END { printf "== tests: %d passed, %d failed, %d ignored\n", n["passed"], n["failed"], n["ignored"] }' "$test_log")
echo "$summary"
ignored=$(sed -n 's/.* \([0-9]*\) ignored$/\1/p' <<<"$summary")
if (( ignored > 0 )); then
    if [[ $(id -u) == 0 ]]; then
        echo "$ignored tests were ignored although this run includes them" >&2
        exit 1
    fi
    echo "NOT RUN: $ignored tests that need root (network namespaces, TUN) or a tool this script installs as root (promtool); run as root to include them"
fi
phase "benchmark helpers"
python3 scripts/test_profile_split.py
echo "== weft-cni under real container runtimes (podman's CNI backend; containerd's CRI on the conflist weft-agent writes)"
phase "runtime e2e"
# The runtime drivers (cni-podman-e2e.sh, cni-cri-e2e.sh) are kept outside
# this repository, in shared/cni-runtime/ beside the checkout.
runtimes=$(cd "$(dirname "$0")/../.." && pwd)/shared/cni-runtime
if [[ $(id -u) == 0 && -d $runtimes ]]; then
    bash "$runtimes/cni-podman-e2e.sh" "$PWD/target/$profile/weft-cni"
    WEFT_PROFILE=$profile WEFT_PREBUILT=1 bash scripts/cni-cri-agent-conflist.sh "$runtimes"
else
    echo "SKIPPED: needs root and the runtime drivers in $runtimes"
fi
# Every parser that reads outside input, coverage-guided, for a bounded time
# (WEFT_FUZZ_SECONDS per target, 20 by default; 0 skips, and says so).
phase fuzz
if [[ -n $fuzz_build ]]; then
    if ! wait "$fuzz_build"; then
        cat "$fuzz_build_log" >&2
        exit 1
    fi
    cat "$fuzz_build_log"
    fuzz_build=
fi
if [[ $fuzz_seconds == 0 ]]; then
    [[ ${CI:-} == true ]] && { echo "CI runs the fuzz targets: WEFT_FUZZ_SECONDS=0 is not allowed here" >&2; exit 1; }
    echo "SKIPPED: fuzzing (WEFT_FUZZ_SECONDS=0)"
else
    env -u RUSTC_WORKSPACE_WRAPPER -u RUSTFLAGS scripts/fuzz.sh "$fuzz_seconds"
fi

echo "== done (last phase: $((SECONDS - phase_start)) s, total: $SECONDS s)"
