//! Weft's node agent: backend -> mesh core -> reconciler, and `weftctl`.

pub mod mesh;
