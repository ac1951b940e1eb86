//! The protocol core's per-packet cost as the workers pay it, boringtun 0.7
//! (the core Weft started on) against gotatun 0.10 (the one it runs now), in
//! one run: sealing a packet into the GSO batch and opening a datagram into
//! the TUN write, with each core's own calls and the copies each needs around
//! them (gotatun works on owned buffers: the payload is copied into a reused
//! buffer with its padding, sealed into a buffer gotatun allocates, and copied
//! into the batch; boringtun seals from one slice into another).
//! docs/security.md weighs the difference against what gotatun fixes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::outbound::GsoBatch;
use dataplane::wire::{self, PacketBuffers};
use gotatun::noise::TunnResult as GTunnResult;
use gotatun::packet::{Packet, WgKind};
use std::time::{Duration, Instant};
use weft_benches::{connected_gotatun_pair, connected_pair, packet};

const SIZES: [usize; 2] = [128, 1420];
const MTU: u16 = 1420;

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_seal");
    for size in SIZES {
        let p = packet(size);
        g.throughput(Throughput::Bytes(size as u64));
        let (mut bt, _peer) = connected_pair();
        let mut batch = GsoBatch::new(64);
        g.bench_function(format!("boringtun/{size}"), |bench| {
            bench.iter(|| {
                batch.clear();
                if let boringtun::noise::TunnResult::WriteToNetwork(m) =
                    bt.encapsulate(&p, batch.room())
                {
                    let n = m.len();
                    batch.commit(n);
                }
                batch.contents().0.len()
            })
        });
        let (mut gt, _peer) = connected_gotatun_pair();
        let buffers = PacketBuffers::new();
        g.bench_function(format!("gotatun/{size}"), |bench| {
            bench.iter(|| {
                batch.clear();
                let padded = wire::padded_len(p.len(), MTU);
                if let Some(WgKind::Data(m)) =
                    gt.handle_outgoing_packet(buffers.padded(&p, padded), None)
                {
                    let bytes: &[u8] = &Packet::from(m);
                    batch.room()[..bytes.len()].copy_from_slice(bytes);
                    batch.commit(bytes.len());
                }
                batch.contents().0.len()
            })
        });
    }
    g.finish();
}

/// Times `open` over `iters` messages that `seal` makes outside the timed
/// part, in chunks, each opened once and in order: a replay would be
/// refused early and measure nothing.
fn time_fresh_opens(
    iters: u64,
    mut seal: impl FnMut() -> Vec<u8>,
    mut open: impl FnMut(&[u8]),
) -> Duration {
    const CHUNK: u64 = 20_000;
    let mut timed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        left -= n;
        let sealed: Vec<Vec<u8>> = (0..n).map(|_| seal()).collect();
        let start = Instant::now();
        for m in &sealed {
            open(m);
        }
        timed += start.elapsed();
    }
    timed
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_open");
    for size in SIZES {
        let p = packet(size);
        g.throughput(Throughput::Bytes(size as u64));
        let (mut a, mut b) = connected_pair();
        let mut buf = vec![0u8; 4096];
        let mut out = vec![0u8; 4096];
        g.bench_function(format!("boringtun/{size}"), |bench| {
            bench.iter_custom(|iters| {
                time_fresh_opens(
                    iters,
                    || match a.encapsulate(&p, &mut buf) {
                        boringtun::noise::TunnResult::WriteToNetwork(m) => m.to_vec(),
                        _ => panic!("no data message"),
                    },
                    |m| match b.decapsulate(None, m, &mut out) {
                        boringtun::noise::TunnResult::WriteToTunnelV4(pkt, _) => {
                            assert_eq!(pkt.len(), p.len())
                        }
                        other => panic!("not opened: {other:?}"),
                    },
                )
            })
        });
        let (mut a, mut b) = connected_gotatun_pair();
        let buffers = PacketBuffers::new();
        g.bench_function(format!("gotatun/{size}"), |bench| {
            bench.iter_custom(|iters| {
                time_fresh_opens(
                    iters,
                    || {
                        let padded = wire::padded_len(p.len(), MTU);
                        match a.handle_outgoing_packet(buffers.padded(&p, padded), None) {
                            Some(WgKind::Data(m)) => Packet::<[u8]>::from(m).to_vec(),
                            _ => panic!("no data message"),
                        }
                    },
                    |m| {
                        let message = buffers.packet(m).try_into_wg().expect("a message");
                        match b.handle_incoming_packet(message) {
                            GTunnResult::WriteToTunnel(plain) => {
                                let n = wire::inner_packet(&plain).map_or(0, |inner| inner.len);
                                assert_eq!(n, p.len());
                                out[..n].copy_from_slice(&plain[..n]);
                            }
                            other => panic!("not opened: {other:?}"),
                        }
                    },
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, seal, open);
criterion_main!(benches);
