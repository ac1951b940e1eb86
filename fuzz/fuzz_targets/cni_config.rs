//! The network configuration a container runtime writes to weft-cni's
//! stdin, and everything derived from it before any system call.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cni::config::NetConf;

fuzz_target!(|data: &[u8]| {
    if let Ok(conf) = NetConf::parse(data) {
        let _ = conf.mtu();
        let _ = conf.is_gateway();
        if let Ok(ipam) = conf.ipam() {
            let _ = ipam.is_host_local();
            let _ = ipam.data_dir();
            if let Ok(sets) = ipam.range_sets() {
                for r in sets.iter().flatten() {
                    assert!(
                        r.subnet.contains(r.start) && r.subnet.contains(r.end),
                        "a range outside its subnet: {} .. {}",
                        r.start,
                        r.end
                    );
                }
            }
        }
    }
});
