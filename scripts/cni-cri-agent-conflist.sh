#!/usr/bin/env bash
# weft-cni through containerd's CRI (the path k3s's kubelet takes) on the
# conflist weft-agent writes, not a hand-written one: runs the shared
# cni-cri-e2e.sh with its conflist swapped for `weftctl cni-config` output
# (plus a private IPAM dir, so the test's pods stay out of the host's).
#
#   sudo scripts/cni-cri-agent-conflist.sh SHARED_CNI_RUNTIME_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:?usage: cni-cri-agent-conflist.sh SHARED_CNI_RUNTIME_DIR}
# WEFT_PROFILE: the cargo profile to build and use (scripts/test.sh passes its own).
# WEFT_PREBUILT=1: use target/PROFILE's binaries as they are (scripts/test.sh
# built them with the whole workspace; a build of these packages alone would
# resolve their dependencies' features differently and compile them again).
profile=${WEFT_PROFILE:-release}
if [[ ${WEFT_PREBUILT:-} == 1 ]]; then
    for bin in weft-cni weftctl; do
        [[ -x target/$profile/$bin ]] || { echo "target/$profile/$bin is missing" >&2; exit 1; }
    done
else
    cargo build -q --profile "$profile" -p cni-plugin -p agent --bins
fi
work=$(mktemp -d /tmp/weft-cri-agent.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The e2e script's pods live in 10.42.0.0/24.
"target/$profile/weftctl" cni-config --pod-cidr 10.42.0.0/24 > "$work/agent.conflist"
python3 - "$shared/cni-cri-e2e.sh" "$work/agent.conflist" "$work/e2e.sh" <<'PY'
import sys
script, conflist, out = sys.argv[1:]
text = open(script).read()
start = text.index('cat > "$W/net.d/10-$NET.conflist" <<EOF\n')
end = text.index('\nEOF\n', start) + len('\nEOF\n')
swap = (
    'python3 - "' + conflist + '" "$W" <<\'INNER\'\n'
    'import json, sys\n'
    'c = json.load(open(sys.argv[1])); w = sys.argv[2]\n'
    'assert c["name"] == "weft" and c["plugins"][0]["type"] == "weft-cni", c\n'
    'c["plugins"][0]["ipam"]["dataDir"] = w + "/ipam"\n'
    'json.dump(c, open(w + "/net.d/10-weft.conflist", "w"))\n'
    'INNER\n'
)
open(out, "w").write(text[:start] + swap + text[end:])
PY
echo "conflist written by weft-agent (weftctl cni-config):"
cat "$work/agent.conflist"
bash "$work/e2e.sh" "$PWD/target/$profile/weft-cni"
