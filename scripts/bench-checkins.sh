#!/usr/bin/env bash
# What a large cluster's heartbeat costs one agent: weft-agent (Kubernetes
# backend, in a namespace of its own) against an in-memory API server with
# N Kilo-annotated Nodes in L locations, every other node checking in every
# 30 s as Kilo nodes do. Prints the first apply, then for a quiet window and
# a check-in window: events, the agent's CPU per minute, reconcile passes
# and log lines. A benchmark: it asserts nothing.
#
#   sudo scripts/bench-checkins.sh [--nodes 1000] [--locations 50] [--seconds 60] [--quiet-seconds 30]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "needs root (network namespaces): sudo $0 $*" >&2; exit 1; }
(cd "$root" && cargo build --release -q -p agent -p dataplane -p weft-benches --bins)
exec "$root/target/release/checkin_load" "$@"
