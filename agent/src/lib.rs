//! Weft's node agent: backend -> mesh core -> reconciler, and `weftctl`.

pub mod backend;
pub mod cli;
pub mod connect;
pub mod controller;
pub mod discover;
pub mod flags;
pub mod forwarding;
pub mod http;
/// The mesh core lives in its own crate; its old path stays.
pub use weft_mesh as mesh;
pub mod metrics;
pub mod mtu;
pub mod probe;
pub mod reconcile;
pub mod render;
pub mod report;
pub mod status;
