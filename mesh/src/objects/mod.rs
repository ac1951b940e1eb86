//! Kilo's Kubernetes objects as the mesh reads them: a Node's annotations
//! ([`annotations`], over the slim [`node::MeshNode`] or k8s-openapi's
//! Node) and the Peer resource ([`peer`]), read into the mesh's raw
//! records with Kilo's validation, and the annotations a node owns written
//! back as minimal patches. Pure: the agent's Kubernetes backend does the
//! watching and the writing.

pub mod annotations;
pub mod node;
pub mod peer;
