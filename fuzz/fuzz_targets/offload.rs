//! What the TUN hands the outbound side (a read with a virtio-net header:
//! GSO type, sizes and checksum offsets the kernel claims, then a
//! super-packet) cut into segments, and what the inbound side coalesces
//! (any packet, decrypted). The first byte picks the path and its options.
#![no_main]

use dataplane::coalesce::Coalescer;
use dataplane::offload::Segments;
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};

/// One coalescer per option set, reused (each holds megabytes of buffers).
static COALESCERS: OnceLock<[Mutex<Coalescer>; 4]> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let mut read = rest.to_vec();
        if let Ok(mut segments) = Segments::new(&mut read, mode & 2 != 0) {
            let mut n = 0;
            while let Some(segment) = segments.next() {
                assert!(segment.len() <= 65_535);
                n += 1;
                assert!(n <= 65_536, "segmentation does not end");
            }
        }
    } else {
        // Packets separated by their own first byte as a length.
        let all = COALESCERS.get_or_init(|| {
            [(false, false), (true, false), (false, true), (true, true)]
                .map(|(tcp, udp)| Mutex::new(Coalescer::new(tcp, udp)))
        });
        let mut c = all[usize::from((mode >> 1) & 3)].lock().unwrap();
        let mut rest = rest;
        while let Some((&len, tail)) = rest.split_first() {
            let len = (usize::from(len) * 8).min(tail.len());
            let (packet, tail) = tail.split_at(len);
            rest = tail;
            c.push_with(packet.len(), |out| {
                out[..packet.len()].copy_from_slice(packet);
                Some(packet.len())
            });
            if c.is_full() {
                let _ = c.flush(|_| Ok(()));
            }
        }
        let _ = c.flush(|written| {
            assert!(written.len() <= 65_535 + 10);
            Ok(())
        });
    }
});
