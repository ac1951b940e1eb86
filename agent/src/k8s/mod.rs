//! The Kubernetes backend: Kilo's node annotations and Peer resource read
//! into the mesh's raw records (pure, tested without an API server), the
//! annotations the agent owns written back as minimal patches, and the
//! reflector-based backend that ties them to the API.

pub mod annotations;
pub mod backend;
pub mod health;
pub mod node;
pub mod peer;
