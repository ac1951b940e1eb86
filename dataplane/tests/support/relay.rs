//! A UDP relay between two test hosts: the path's misbehaviour (reordering)
//! and a tap on what crosses it (sizes, captured datagrams), since this
//! kernel has no netem.

use super::*;
use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const RELAY_A: u16 = 52001;
pub const RELAY_B: u16 = 52002;

/// The sizes of the data messages a relay forwarded, by direction.
#[derive(Default)]
pub struct RelayLog {
    pub to_b: Vec<usize>,
    pub to_a: Vec<usize>,
}

/// A UDP relay in b's namespace: a talks to `face_a`, b to `face_b`; what
/// one face receives leaves through the other to the real endpoint. On the
/// way to b it may hold back every `hold.0`th data message until `hold.1`
/// more datagrams have passed.
pub struct Relay {
    pub face_a: SocketAddr,
    pub face_b: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<usize>>>,
    /// The first datagrams on their way to a, kept for replaying.
    pub captured_to_a: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The first datagrams on their way to b.
    pub captured_to_b: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Relay {
    pub fn start(pair: &Pair, hold: Option<(usize, usize)>) -> Self {
        let face_a = SocketAddr::from((pair.b_addr, RELAY_A));
        let face_b = SocketAddr::from((pair.b_addr, RELAY_B));
        let real_a = SocketAddr::from((pair.a_addr, PORT_A));
        let real_b = SocketAddr::from((pair.b_addr, PORT_B));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        pair.b
            .run_in(move || {
                let a = UdpSocket::bind(face_a).expect("bind relay face a");
                let b = UdpSocket::bind(face_b).expect("bind relay face b");
                for s in [&a, &b] {
                    big_receive_buffer(s, 16 << 20);
                    s.set_read_timeout(Some(Duration::from_millis(50)))
                        .expect("timeout");
                }
                tx.send((a, b)).expect("sockets");
            })
            .join()
            .expect("relay sockets");
        let (a, b) = rx.recv().expect("sockets");
        let captured_to_a = Arc::new(Mutex::new(Vec::new()));
        let captured_to_b = Arc::new(Mutex::new(Vec::new()));
        let (a2, b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
        let (stop_b, stop_a) = (stop.clone(), stop.clone());
        let (capture_a, capture_b) = (captured_to_a.clone(), captured_to_b.clone());
        let threads = vec![
            std::thread::spawn(move || forward(a2, b2, real_b, hold, Some(capture_b), stop_b)),
            std::thread::spawn(move || forward(b, a, real_a, None, Some(capture_a), stop_a)),
        ];
        Self {
            face_a,
            face_b,
            stop,
            threads,
            captured_to_a,
            captured_to_b,
        }
    }

    /// Stops the relay (releasing what it held) and returns what it saw.
    pub fn finish(mut self) -> RelayLog {
        self.stop.store(true, Ordering::SeqCst);
        let to_a = self.threads.pop().expect("thread").join().expect("relay");
        let to_b = self.threads.pop().expect("thread").join().expect("relay");
        RelayLog { to_b, to_a }
    }
}

/// Datagrams kept by a capture at most.
const CAPTURE: usize = 4096;

fn forward(
    from: UdpSocket,
    to: UdpSocket,
    dest: SocketAddr,
    hold: Option<(usize, usize)>,
    capture: Option<Arc<Mutex<Vec<Vec<u8>>>>>,
    stop: Arc<AtomicBool>,
) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut held: VecDeque<(usize, Vec<u8>)> = VecDeque::new();
    let (mut forwarded, mut data) = (0usize, 0usize);
    let mut buf = vec![0u8; 65_536];
    // Bounded: the tests stop it within seconds; this is a backstop.
    let end = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let Ok(n) = from.recv(&mut buf) else {
            continue;
        };
        let d = &buf[..n];
        if d[0] == 4 {
            sizes.push(n);
        }
        if let Some(c) = &capture {
            let mut c = c.lock().expect("capture");
            if c.len() < CAPTURE {
                c.push(d.to_vec());
            }
        }
        let is_data = n > 32 && d[0] == 4;
        if is_data {
            data += 1;
        }
        match hold {
            Some((every, by)) if is_data && data % every == 0 => {
                held.push_back((forwarded + by, d.to_vec()));
            }
            _ => {
                let _ = to.send_to(d, dest);
                forwarded += 1;
            }
        }
        while held.front().is_some_and(|(due, _)| *due <= forwarded) {
            let (_, d) = held.pop_front().expect("front");
            let _ = to.send_to(&d, dest);
            forwarded += 1;
        }
    }
    for (_, d) in held {
        let _ = to.send_to(&d, dest);
    }
    sizes
}

/// A tunnel whose peers reach each other only through a relay.
pub fn relayed(
    ia: Implementation,
    ib: Implementation,
    hold: Option<(usize, usize)>,
) -> (Tunnel, Relay) {
    let t = Tunnel::new(ia, ib);
    let relay = Relay::start(&t.pair, hold);
    let face_a = relay.face_a.to_string();
    let face_b = relay.face_b.to_string();
    t.wa.wg(&["set", &t.wa.name, "peer", &t.kb.public, "endpoint", &face_a]);
    t.wb.wg(&["set", &t.wb.name, "peer", &t.ka.public, "endpoint", &face_b]);
    assert!(
        t.pair.a.ping_within(TB, Duration::from_secs(10)),
        "no tunnel through the relay"
    );
    (t, relay)
}
