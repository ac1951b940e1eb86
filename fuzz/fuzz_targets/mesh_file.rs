//! The mesh file (`--backend file`): YAML or JSON an operator writes, parsed,
//! built into a topology, and rendered into every node's desired state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_mesh::file::MeshFile;
use weft_mesh::Topology;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(loaded) = MeshFile::parse(text, "fuzz.yaml") else {
        return;
    };
    if let Ok(t) = Topology::new(&loaded.snapshot, &loaded.options, 1_700_000_000) {
        for n in &loaded.snapshot.nodes {
            let _ = t.desired_state(&n.name);
        }
    }
});
