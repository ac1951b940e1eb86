#!/bin/sh
# Starts weft-agent with the iptables backend (legacy or nf_tables) that the
# host already uses, so our chains sit in the same tables as kube-proxy's.
# The host's choice is the one holding more rules; nf_tables when unsure.
set -eu
if command -v iptables-legacy-save >/dev/null && command -v update-alternatives >/dev/null; then
    legacy=$(iptables-legacy-save 2>/dev/null | grep -c '^-' || true)
    nft=$(iptables-nft-save 2>/dev/null | grep -c '^-' || true)
    if [ "${legacy:-0}" -gt "${nft:-0}" ]; then mode=legacy; else mode=nft; fi
    for t in iptables ip6tables; do
        update-alternatives --set "$t" "/usr/sbin/$t-$mode" >/dev/null
    done
    echo "entrypoint: iptables-$mode (host rules: legacy $legacy, nf_tables $nft)"
fi
exec weft-agent "$@"
