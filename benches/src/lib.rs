//! Benchmarks live in `benches/`; run them with `cargo bench -p weft-benches`.
//! The netns throughput comparison against wireguard-go is
//! `scripts/bench-throughput.sh`.

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use dataplane::PrivateKey;

/// Two `Tunn`s that have completed a handshake with each other, as a sender
/// and a receiver for encryption benchmarks.
pub fn connected_pair() -> (Tunn, Tunn) {
    let (ka, kb) = (
        PrivateKey::generate().expect("random key"),
        PrivateKey::generate().expect("random key"),
    );
    let secret = |k: &PrivateKey| x25519::StaticSecret::from(k.0);
    let public = |k: &PrivateKey| x25519::PublicKey::from(k.public_key().0);
    let mut a = Tunn::new(secret(&ka), public(&kb), None, None, 1, None);
    let mut b = Tunn::new(secret(&kb), public(&ka), None, None, 2, None);
    let mut buf_a = vec![0u8; 2048];
    let mut buf_b = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = a.format_handshake_initiation(&mut buf_a, false) else {
        panic!("no handshake initiation");
    };
    let TunnResult::WriteToNetwork(resp) = b.decapsulate(None, init, &mut buf_b) else {
        panic!("no handshake response");
    };
    let TunnResult::WriteToNetwork(keepalive) = a.decapsulate(None, resp, &mut buf_a) else {
        panic!("no keepalive");
    };
    let _ = b.decapsulate(None, keepalive, &mut buf_b);
    (a, b)
}

/// The same with gotatun's `Tunn`, the core the data plane runs.
pub fn connected_gotatun_pair() -> (gotatun::noise::Tunn, gotatun::noise::Tunn) {
    use gotatun::noise::index_table::IndexTable;
    use gotatun::noise::rate_limiter::RateLimiter;
    use gotatun::noise::{Tunn as GTunn, TunnResult as GResult};
    use gotatun::packet::WgKind;
    use std::sync::Arc;
    let (ka, kb) = (
        PrivateKey::generate().expect("random key"),
        PrivateKey::generate().expect("random key"),
    );
    let secret = |k: &PrivateKey| gotatun::x25519::StaticSecret::from(k.0);
    let public = |k: &PrivateKey| gotatun::x25519::PublicKey::from(k.public_key().0);
    let table = IndexTable::from_os_rng();
    let limiter = |k: &PrivateKey| Arc::new(RateLimiter::new(&public(k), 100));
    let mut a = GTunn::new(
        secret(&ka),
        public(&kb),
        None,
        None,
        table.clone(),
        limiter(&ka),
    );
    let mut b = GTunn::new(secret(&kb), public(&ka), None, None, table, limiter(&kb));
    let init = a.format_handshake_initiation(false).expect("initiation");
    let GResult::WriteToNetwork(resp) = b.handle_incoming_packet(WgKind::HandshakeInit(init))
    else {
        panic!("no handshake response");
    };
    let GResult::WriteToNetwork(keepalive) = a.handle_incoming_packet(resp) else {
        panic!("no keepalive");
    };
    let _ = b.handle_incoming_packet(keepalive);
    (a, b)
}

/// An IPv4/TCP packet of `len` bytes in total.
pub fn packet(len: usize) -> Vec<u8> {
    dataplane::offload::ipv4_tcp_packet(1, len.saturating_sub(40), false, true)
}
