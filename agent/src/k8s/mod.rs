//! The Kubernetes backend's pure half: Kilo's node annotations and labels
//! read into the mesh's raw records, and the annotations the agent owns
//! written back as a minimal patch. (The watch loop that feeds it is the
//! next step; everything here is tested without an API server.)

pub mod annotations;
pub mod backend;
pub mod peer;
