//! The receive path, as a worker runs it on one datagram: dispatch by type
//! and length, mac1 and the per-source limiter for handshakes, the receiver's
//! session for data, then the decrypted payload read as one IP packet, the
//! allowed-IPs source check, and the coalescer. The first byte picks what the
//! rest is:
//!
//! - 0: a raw datagram from anyone (forged handshakes, data for unknown or
//!   live indices, cookie replies, junk);
//! - 1: a plaintext that a genuine peer seals, so decryption succeeds and
//!   whatever it holds reaches the inner-packet parser and the coalescer;
//! - 2: a genuine sealed message with one byte flipped (header, counter,
//!   ciphertext or tag).
#![no_main]

use dataplane::coalesce::Coalescer;
use dataplane::wire::{self, MessageType, PacketBuffers};
use dataplane::{AllowedIps, IpPrefix, PrivateKey};
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::{Tunn, TunnResult};
use gotatun::packet::{Packet, WgKind};
use gotatun::x25519;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

struct Pair {
    /// The genuine peer that seals.
    sender: Tunn,
    /// The device under test, its limiter, and its allowed IPs.
    receiver: Tunn,
    limiter: Arc<RateLimiter>,
    allowed: AllowedIps<u8>,
    coalescer: Coalescer,
    buffers: PacketBuffers,
}

fn pair() -> Pair {
    let key = |k: PrivateKey| x25519::StaticSecret::from(k.0);
    let (a, b) = (
        PrivateKey::generate().unwrap(),
        PrivateKey::generate().unwrap(),
    );
    let (sa, sb) = (key(a.clone()), key(b.clone()));
    let (pa, pb) = (x25519::PublicKey::from(&sa), x25519::PublicKey::from(&sb));
    let table = IndexTable::from_os_rng();
    let limiter = Arc::new(RateLimiter::new(&pb, 20));
    let mut sender = Tunn::new(
        sa,
        pb,
        None,
        None,
        table.clone(),
        Arc::new(RateLimiter::new(&pa, 20)),
    );
    let mut receiver = Tunn::new(sb, pa, None, None, table, limiter.clone());
    let init = sender
        .format_handshake_initiation(false)
        .expect("initiation");
    let TunnResult::WriteToNetwork(resp) =
        receiver.handle_incoming_packet(WgKind::HandshakeInit(init))
    else {
        panic!("no response");
    };
    let TunnResult::WriteToNetwork(keepalive) = sender.handle_incoming_packet(resp) else {
        panic!("no keepalive");
    };
    receiver.handle_incoming_packet(keepalive);
    let mut allowed = AllowedIps::new();
    allowed.insert(IpPrefix::new([10, 4, 0, 0].into(), 16).unwrap(), 1);
    allowed.insert(IpPrefix::new("fd00::".parse().unwrap(), 64).unwrap(), 1);
    allowed.insert(IpPrefix::new([10, 5, 0, 0].into(), 16).unwrap(), 2);
    Pair {
        sender,
        receiver,
        limiter,
        allowed,
        coalescer: Coalescer::new(true, true),
        buffers: PacketBuffers::new(),
    }
}

fn receive(p: &mut Pair, datagram: &[u8]) {
    let from: SocketAddr = "192.0.2.7:51820".parse().unwrap();
    let Some(kind) = wire::message_type(datagram) else {
        return;
    };
    let message = match kind {
        MessageType::HandshakeInit | MessageType::HandshakeResponse => {
            match p.limiter.verify_packet(from, p.buffers.packet(datagram)) {
                Ok(m) => m,
                Err(_) => return,
            }
        }
        MessageType::Data | MessageType::CookieReply => {
            let _ = wire::receiver_index(datagram);
            match p.buffers.packet(datagram).try_into_wg() {
                Ok(m) => m,
                Err(_) => return,
            }
        }
    };
    let TunnResult::WriteToTunnel(plain) = p.receiver.handle_incoming_packet(message) else {
        return;
    };
    let Some(inner) = wire::inner_packet(&plain) else {
        return;
    };
    assert!(inner.len <= plain.len());
    if p.allowed.lookup(inner.source) != Some(&1) {
        return;
    }
    let packet = &plain[..inner.len];
    p.coalescer.push_with(packet.len(), |out| {
        out[..packet.len()].copy_from_slice(packet);
        Some(packet.len())
    });
    if p.coalescer.is_full() {
        let _ = p.coalescer.flush(|_| Ok(()));
    }
}

fn seal(p: &mut Pair, plaintext: &[u8]) -> Option<Vec<u8>> {
    let padded = wire::padded_len(plaintext.len(), 1420);
    match p
        .sender
        .handle_outgoing_packet(p.buffers.padded(plaintext, padded), None)?
    {
        WgKind::Data(m) => Some(Packet::<[u8]>::from(m).to_vec()),
        _ => None,
    }
}

static PAIR: OnceLock<Mutex<Pair>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut p = PAIR.get_or_init(|| Mutex::new(pair())).lock().unwrap();
    match mode % 3 {
        0 => receive(&mut p, rest),
        1 => {
            if let Some(m) = seal(&mut p, rest) {
                receive(&mut p, &m);
            }
        }
        _ => {
            let Some((&at, rest)) = rest.split_first() else {
                return;
            };
            let Some((&flip, rest)) = rest.split_first() else {
                return;
            };
            if let Some(mut m) = seal(&mut p, rest) {
                let i = usize::from(at) % m.len();
                m[i] ^= flip.max(1);
                receive(&mut p, &m);
            }
        }
    }
    let _ = p.coalescer.flush(|_| Ok(()));
    // Keep the sessions alive whatever was fed in.
    let _ = IpAddr::from([0u8; 4]);
});
