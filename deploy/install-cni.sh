#!/bin/sh
# Installs the CNI plugins Weft's conflist names (weft-cni, and the reference
# portmap and loopback that containerd always runs) into the node's CNI bin
# directories. Runs as the DaemonSet's init container; idempotent.
#
#   install-cni.sh DEST_DIR [DEST_DIR...]
#
# Each file is copied next to its final name and renamed over it, so a
# runtime that executes a plugin during an upgrade never sees half a binary.
# Env: WEFT_CNI_SRC (default /opt/weft/cni): where the image keeps them.
set -eu
src=${WEFT_CNI_SRC:-/opt/weft/cni}
plugins="weft-cni portmap loopback"
[ "$#" -gt 0 ] || { echo "usage: install-cni.sh DEST_DIR [DEST_DIR...]" >&2; exit 2; }
for p in $plugins; do
    [ -x "$src/$p" ] || { echo "install-cni: $src/$p is missing or not executable" >&2; exit 1; }
done
for dest in "$@"; do
    mkdir -p "$dest"
    for p in $plugins; do
        tmp="$dest/.$p.weft-tmp"
        cp "$src/$p" "$tmp"
        chmod 0755 "$tmp"
        mv -f "$tmp" "$dest/$p"
    done
    echo "install-cni: installed $plugins into $dest"
done
