//! Weft's node agent: backend -> mesh core -> reconciler, and `weftctl`.

pub mod backend;
pub mod cli;
pub mod demo;
pub mod discover;
pub mod file_backend;
pub mod forwarding;
pub mod http;
pub mod k8s;
pub mod mesh;
pub mod metrics;
pub mod probe;
pub mod reconcile;
pub mod render;
pub mod status;
