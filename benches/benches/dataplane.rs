//! Per-packet costs of the data plane: encryption and decryption one packet
//! at a time and as the workers batch them, and the offload split and
//! coalesce steps around them, and the multi-queue dispatch: workers on
//! threads of their own, each routing and encrypting the batches of its TUN
//! queue. The sealing here is boringtun's slice-to-slice API, kept as the
//! reference the offload designs were measured against; the core the workers
//! run now (gotatun) is set against it in `benches/core.rs`.

use boringtun::noise::TunnResult;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dataplane::offload::{self, VNET_HDR_LEN};
use dataplane::outbound::{peer_runs, GsoBatch};
use dataplane::{AllowedIps, IpPrefix};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
use weft_benches::{connected_pair, packet};

const SIZES: [usize; 3] = [64, 512, 1420];
const BATCH: usize = 64;

fn encapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("encapsulate");
    for size in SIZES {
        let (mut a, _b) = connected_pair();
        let p = packet(size);
        let mut out = vec![0u8; 65_536 + 4096];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("single/{size}"), |bench| {
            bench.iter(|| match a.encapsulate(&p, &mut out) {
                TunnResult::WriteToNetwork(m) => m.len(),
                _ => 0,
            })
        });
        g.throughput(Throughput::Bytes((size * BATCH) as u64));
        let mut batch = GsoBatch::new(BATCH);
        g.bench_function(format!("batch{BATCH}/{size}"), |bench| {
            bench.iter(|| {
                batch.clear();
                for _ in 0..BATCH {
                    if let TunnResult::WriteToNetwork(m) = a.encapsulate(&p, batch.room()) {
                        let n = m.len();
                        batch.commit(n);
                    }
                }
                batch.contents().0.len()
            })
        });
    }
    g.finish();
}

fn decapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("decapsulate");
    for size in SIZES {
        let (mut a, mut b) = connected_pair();
        let p = packet(size);
        // Every message must be fresh (replay protection), so each iteration
        // decrypts messages sealed in untimed setup.
        let mut seal = |n: usize| -> Vec<Vec<u8>> {
            let mut buf = vec![0u8; 4096];
            (0..n)
                .map(|_| match a.encapsulate(&p, &mut buf) {
                    TunnResult::WriteToNetwork(m) => m.to_vec(),
                    _ => panic!("no session"),
                })
                .collect()
        };
        let mut out = vec![0u8; 4096];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("single/{size}"), |bench| {
            bench.iter_batched(
                || seal(1),
                |msgs| match b.decapsulate(None, &msgs[0], &mut out) {
                    TunnResult::WriteToTunnelV4(pkt, _) => pkt.len(),
                    other => panic!("decapsulate failed: {other:?}"),
                },
                BatchSize::SmallInput,
            )
        });
        g.throughput(Throughput::Bytes((size * BATCH) as u64));
        g.bench_function(format!("batch{BATCH}/{size}"), |bench| {
            bench.iter_batched(
                || seal(BATCH),
                |msgs| {
                    let mut total = 0;
                    for m in &msgs {
                        if let TunnResult::WriteToTunnelV4(pkt, _) =
                            b.decapsulate(None, m, &mut out)
                        {
                            total += pkt.len();
                        }
                    }
                    assert_eq!(total, size * BATCH);
                    total
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn offloads(c: &mut Criterion) {
    let mut g = c.benchmark_group("offload");
    let mss = 1380usize;
    let payload = 64_000usize;
    g.throughput(Throughput::Bytes(payload as u64));
    let template = offload::tso_super_packet(1, payload, mss as u16);
    let mut out = vec![vec![0u8; 2048]; 128];
    let mut sizes = vec![0usize; 128];
    g.bench_function("gso_split/64000", |bench| {
        bench.iter_batched_ref(
            || template.clone(),
            |input| offload::split_super_packet(input, &mut out, &mut sizes, 0).expect("split"),
            BatchSize::SmallInput,
        )
    });
    // The sender's whole step for one super-packet, as it was (tun-rs's
    // split copies every segment out, then sealing copies it again) and as
    // it is (segments cut in place, copied once, into the sealing buffer).
    let (mut tunn, _peer) = connected_pair();
    let mut sealed = GsoBatch::new(BATCH);
    let seal = |tunn: &mut boringtun::noise::Tunn, p: &[u8], out: &mut GsoBatch| {
        if let TunnResult::WriteToNetwork(m) = tunn.encapsulate(p, out.room()) {
            let n = m.len();
            out.commit(n);
        }
    };
    g.bench_function("split_and_seal/copy/64000", |bench| {
        bench.iter_batched_ref(
            || template.clone(),
            |input| {
                sealed.clear();
                let n = offload::split_super_packet(input, &mut out, &mut sizes, 0).expect("split");
                for i in 0..n {
                    seal(&mut tunn, &out[i][..sizes[i]], &mut sealed);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("split_and_seal/in_place/64000", |bench| {
        bench.iter_batched_ref(
            || template.clone(),
            |input| {
                sealed.clear();
                let mut segments = offload::Segments::new(input, true).expect("a super-packet");
                while let Some(p) = segments.next() {
                    seal(&mut tunn, p, &mut sealed);
                }
            },
            BatchSize::SmallInput,
        )
    });
    // The receiver's whole step for one flow's burst, as it was (each packet
    // decrypted into a buffer of its own, then tun-rs checks every checksum
    // and copies the payloads together) and as it is (each decrypted onto
    // the end of the super-packet before it).
    let (mut sender, mut receiver) = connected_pair();
    let burst = payload / mss;
    let mut seal_burst = || -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        (0..burst)
            .map(|i| {
                let p = offload::ipv4_tcp_packet((i * mss) as u32, mss, false, true);
                match sender.encapsulate(&p, &mut buf) {
                    TunnResult::WriteToNetwork(m) => m.to_vec(),
                    _ => panic!("no session"),
                }
            })
            .collect()
    };
    let mut own: Vec<Vec<u8>> = vec![Vec::with_capacity(VNET_HDR_LEN + 65_535); burst];
    let mut gro = tun_rs::GROTable::new();
    g.bench_function("open_and_coalesce/copy/64000", |bench| {
        bench.iter_batched(
            &mut seal_burst,
            |msgs| {
                for (m, b) in msgs.iter().zip(own.iter_mut()) {
                    b.resize(VNET_HDR_LEN + m.len(), 0);
                    let n = match receiver.decapsulate(None, m, &mut b[VNET_HDR_LEN..]) {
                        TunnResult::WriteToTunnelV4(pkt, _) => pkt.len(),
                        other => panic!("decapsulate failed: {other:?}"),
                    };
                    b.truncate(VNET_HDR_LEN + n);
                }
                offload::coalesce(&mut own, &mut gro).expect("coalesce");
            },
            BatchSize::SmallInput,
        )
    });
    let mut coalescer = dataplane::coalesce::Coalescer::new(true, true);
    g.bench_function("open_and_coalesce/fused/64000", |bench| {
        bench.iter_batched(
            &mut seal_burst,
            |msgs| {
                for m in &msgs {
                    coalescer.push_with(m.len(), |out| match receiver.decapsulate(None, m, out) {
                        TunnResult::WriteToTunnelV4(pkt, _) => Some(pkt.len()),
                        other => panic!("decapsulate failed: {other:?}"),
                    });
                }
                let mut writes = 0;
                coalescer
                    .flush(|_| {
                        writes += 1;
                        Ok(())
                    })
                    .expect("flush");
                assert_eq!(writes, 1, "one super-packet");
            },
            BatchSize::SmallInput,
        )
    });
    let segments: Vec<Vec<u8>> = (0..payload / mss)
        .map(|i| {
            let mut b = vec![0u8; VNET_HDR_LEN];
            b.reserve(65_535);
            b.extend(offload::ipv4_tcp_packet((i * mss) as u32, mss, false, true));
            b
        })
        .collect();
    let mut table = tun_rs::GROTable::new();
    g.bench_function("gro_coalesce/64000", |bench| {
        bench.iter_batched_ref(
            || segments.clone(),
            |bufs| offload::coalesce(bufs, &mut table).expect("coalesce"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The multi-queue dispatch as the workers run it: each worker routes its
/// batch of 64 packets of 1420 bytes (`peer_runs` over a table of 100
/// peers), takes each peer's lock once per run and seals into a GSO batch.
/// `own-peer`: every worker sends to a peer of its own, as when the kernel
/// spreads flows to different peers over the queues; `one-peer`: all send to
/// the same peer, whose session lock serializes them. Throughput is the
/// workers' bytes together, so scaling shows as a rising figure (on a machine
/// with at least as many cores as workers).
fn dispatch(c: &mut Criterion) {
    const PEERS: u8 = 100;
    const SIZE: usize = 1420;
    let mut g = c.benchmark_group("dispatch");
    g.measurement_time(Duration::from_secs(4));
    let peers: Vec<Arc<Mutex<boringtun::noise::Tunn>>> = (0..PEERS)
        .map(|_| Arc::new(Mutex::new(connected_pair().0)))
        .collect();
    let mut table = AllowedIps::new();
    for (k, peer) in peers.iter().enumerate() {
        let prefix = IpPrefix::new([10, 0, 1, k as u8].into(), 32).expect("a /32");
        table.insert(prefix, peer.clone());
    }
    let batch_to = |last: u8| -> Vec<Vec<u8>> {
        let mut p = packet(SIZE);
        p[16..20].copy_from_slice(&[10, 0, 1, last]);
        vec![p; BATCH]
    };
    let max_workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    for workers in 1..=max_workers {
        g.throughput(Throughput::Bytes((workers * BATCH * SIZE) as u64));
        for shared_peer in [false, true] {
            let name = if shared_peer { "one-peer" } else { "own-peer" };
            let batches: Vec<Vec<Vec<u8>>> = (0..workers)
                .map(|w| batch_to(if shared_peer { 0 } else { w as u8 }))
                .collect();
            let table = &table;
            g.bench_function(format!("{name}/{workers}-workers"), |bench| {
                bench.iter_custom(|iters| {
                    let start = Barrier::new(workers + 1);
                    std::thread::scope(|scope| {
                        let handles: Vec<_> = batches
                            .iter()
                            .map(|packets| {
                                let start = &start;
                                scope.spawn(move || {
                                    let mut out = GsoBatch::new(BATCH);
                                    start.wait();
                                    let began = Instant::now();
                                    for _ in 0..iters {
                                        let runs = peer_runs(table, packets.len(), |i| {
                                            packets[i].as_slice()
                                        });
                                        for (peer, run) in runs {
                                            out.clear();
                                            let mut tunn = peer.lock().expect("not poisoned");
                                            for p in &packets[run] {
                                                if let TunnResult::WriteToNetwork(m) =
                                                    tunn.encapsulate(p, out.room())
                                                {
                                                    let n = m.len();
                                                    out.commit(n);
                                                }
                                            }
                                        }
                                    }
                                    began.elapsed()
                                })
                            })
                            .collect();
                        start.wait();
                        // The round lasts as long as its slowest worker.
                        handles
                            .into_iter()
                            .map(|h| h.join().expect("worker panicked"))
                            .max()
                            .unwrap_or_default()
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, encapsulate, decapsulate, offloads, dispatch);
criterion_main!(benches);
