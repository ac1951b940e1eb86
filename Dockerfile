# Weft's image: weft-agent, weft-wg (the userspace WireGuard tunnel, run as
# a container of its own), weftctl and weft-cni, plus the reference CNI
# plugins the conflist chains (portmap) or containerd always runs (loopback),
# and iptables.
#
#   docker build -t REGISTRY/weft:TAG .
#   docker push REGISTRY/weft:TAG
#
# then set that image in manifests/weft-k3s.yaml or weft-kubeadm.yaml.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# --locked: the image is built from exactly the dependencies CI tested.
RUN cargo build --release --locked --bin weft-agent --bin weftctl --bin weft-cni --bin weft-wg \
    && mkdir -p /out \
    && cp target/release/weft-agent target/release/weftctl target/release/weft-cni \
          target/release/weft-wg /out/

FROM debian:bookworm-slim
# iptables: both the legacy and nf_tables variants (the entrypoint picks the
# host's); containernetworking-plugins: portmap and loopback.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables containernetworking-plugins ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /opt/weft/cni \
    && cp /usr/lib/cni/portmap /usr/lib/cni/loopback /opt/weft/cni/
COPY --from=build /out/ /usr/local/bin/
RUN cp /usr/local/bin/weft-cni /opt/weft/cni/
COPY deploy/install-cni.sh deploy/k3s-kubeconfig.sh deploy/entrypoint.sh /usr/local/bin/
EXPOSE 1107
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["--help"]
