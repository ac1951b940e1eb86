#!/bin/sh
# Writes a kubeconfig (and a copy of k3s's server CA beside it) for weft-agent on a k3s node that reaches the API
# server the way the node's kubelet does (k3s's local load balancer), not
# through the cluster's service IP: before a CNI runs, nothing else may.
# Credentials are the pod's own service account token (re-read by the agent
# as it rotates) and k3s's server CA.
#
#   k3s-kubeconfig.sh OUT_FILE
#
# Env: K3S_AGENT_DIR (default /var/lib/rancher/k3s/agent),
#      SA_DIR (default /var/run/secrets/kubernetes.io/serviceaccount).
set -eu
out=${1:?usage: k3s-kubeconfig.sh OUT_FILE}
agent=${K3S_AGENT_DIR:-/var/lib/rancher/k3s/agent}
sa=${SA_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}
kubelet="$agent/kubelet.kubeconfig"
[ -r "$kubelet" ] || { echo "k3s-kubeconfig: cannot read $kubelet (is this a k3s node?)" >&2; exit 1; }
server=$(sed -n 's/^[[:space:]]*server:[[:space:]]*//p' "$kubelet" | head -n 1)
case "$server" in
    https://*) ;;
    *) echo "k3s-kubeconfig: no https server in $kubelet (found '$server')" >&2; exit 1 ;;
esac
[ -r "$agent/server-ca.crt" ] || { echo "k3s-kubeconfig: cannot read $agent/server-ca.crt" >&2; exit 1; }
[ -r "$sa/token" ] || { echo "k3s-kubeconfig: no service account token in $sa" >&2; exit 1; }
# The CA goes beside the kubeconfig, so the agent needs no k3s directory.
ca="$(dirname "$out")/server-ca.crt"
cp "$agent/server-ca.crt" "$ca.tmp" && mv -f "$ca.tmp" "$ca"
tmp="$out.tmp"
cat > "$tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: k3s
  cluster:
    server: $server
    certificate-authority: $ca
users:
- name: weft
  user:
    tokenFile: $sa/token
contexts:
- name: weft
  context:
    cluster: k3s
    user: weft
current-context: weft
KUBECONFIG
chmod 0600 "$tmp"
mv -f "$tmp" "$out"
echo "k3s-kubeconfig: API server $server -> $out"
