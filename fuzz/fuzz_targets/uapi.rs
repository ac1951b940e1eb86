//! The UAPI text a client writes to `/var/run/wireguard/IFNAME.sock`
//! (`set=1` bodies), and the `get`/`weft_get` replies the agent's control
//! client reads back from weft-wg.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(update) = dataplane::uapi::parse_set(text.lines()) {
        // What parses formats into a request that parses, and formats the
        // same again (a removed peer's other keys are dropped: they mean
        // nothing once it is gone).
        let once = dataplane::control::format_set(&update);
        let body = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| *l != "set=1" && !l.is_empty())
                .map(str::to_string)
                .collect()
        };
        let again = dataplane::uapi::parse_set(body(&once).iter().map(String::as_str))
            .expect("a formatted request parses");
        assert_eq!(dataplane::control::format_set(&again), once);
    }
    let _ = dataplane::control::parse_get(text.lines());
    let _ = dataplane::uapi::parse_endpoint(text);
});
