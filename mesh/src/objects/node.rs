//! The Node as the mesh reads it: name, version, annotations, labels and
//! pod CIDRs, nothing else. Every agent watches every Node, and a large
//! cluster's nodes check in 33 times a second per 1,000 nodes; parsing each
//! event into k8s-openapi's full Node (its managed fields, conditions,
//! images) cost most of an idle agent's CPU. This type skips what the mesh
//! does not read while parsing (no allocation for it), and the store holds
//! only this.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::{ClusterResourceScope, Resource};
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// What the mesh reads of a Node (see [`MeshNode`] and k8s-openapi's `Node`).
pub trait NodeView {
    fn meta(&self) -> &ObjectMeta;
    /// `spec.podCIDRs`, else `spec.podCIDR`.
    fn pod_cidrs(&self) -> Vec<String>;
}

impl NodeView for Node {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn pod_cidrs(&self) -> Vec<String> {
        let spec = self.spec.as_ref();
        cidrs(
            spec.and_then(|s| s.pod_cidrs.as_deref()),
            spec.and_then(|s| s.pod_cidr.as_deref()),
        )
    }
}

fn cidrs(list: Option<&[String]>, single: Option<&str>) -> Vec<String> {
    match (list, single) {
        (Some(l), _) if !l.is_empty() => l.to_vec(),
        (_, Some(c)) => vec![c.to_string()],
        _ => Vec::new(),
    }
}

/// A Node reduced to what the mesh reads: of the annotations only Kilo's
/// and Weft's (see [`is_mesh_annotation`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MeshNode {
    #[serde(deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: MeshNodeSpec,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct MeshNodeSpec {
    #[serde(default, rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs", skip_serializing_if = "Option::is_none")]
    pub pod_cidrs: Option<Vec<String>>,
}

/// The metadata fields the mesh and the API calls need; the rest (managed
/// fields above all) is skipped unparsed, and of the annotations only
/// Kilo's and Weft's are kept.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMetadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default, deserialize_with = "mesh_annotations")]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Whether the mesh reads an annotation (Kilo's and Weft's own).
pub fn is_mesh_annotation(key: &str) -> bool {
    key.starts_with("kilo.squat.ai/") || key.starts_with("weft.dev/")
}

/// The annotations the mesh reads; the others' values are skipped unread.
fn mesh_annotations<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of annotations")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                if is_mesh_annotation(&k) {
                    out.insert(k.into_owned(), m.next_value::<String>()?);
                } else {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(Visit)
}

fn slim_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMetadata::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        uid: m.uid,
        resource_version: m.resource_version,
        annotations: m.annotations,
        labels: m.labels,
        ..ObjectMeta::default()
    })
}

impl NodeView for MeshNode {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn pod_cidrs(&self) -> Vec<String> {
        cidrs(
            self.spec.pod_cidrs.as_deref(),
            self.spec.pod_cidr.as_deref(),
        )
    }
}

impl Resource for MeshNode {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_the_mesh_reads_and_nothing_else() {
        let v = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": "a", "uid": "u-1", "resourceVersion": "42",
                "annotations": {"kilo.squat.ai/location": "aws", "k3s.io/hostname": "a"},
                "labels": {"topology.kubernetes.io/region": "eu"},
                "managedFields": [{"manager": "k3s", "fieldsV1": {"f:spec": {}}}],
                "creationTimestamp": "2026-11-20T09:12:44Z"
            },
            "spec": {"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24", "fd00::/64"],
                     "taints": [{"key": "x", "effect": "NoSchedule"}]},
            "status": {"images": [{"names": ["big"], "sizeBytes": 1}], "conditions": []}
        });
        let n: MeshNode = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(n.metadata.name.as_deref(), Some("a"));
        assert_eq!(n.metadata.resource_version.as_deref(), Some("42"));
        assert!(n.metadata.managed_fields.is_none(), "skipped");
        assert_eq!(NodeView::pod_cidrs(&n), ["10.42.0.0/24", "fd00::/64"]);
        // The same view as k8s-openapi's full Node.
        let full: Node = serde_json::from_value(v).unwrap();
        assert_eq!(NodeView::pod_cidrs(&full), NodeView::pod_cidrs(&n));
        let kept = n.metadata.annotations.as_ref().unwrap();
        assert_eq!(kept.len(), 1, "only the mesh's annotations: {kept:?}");
        assert_eq!(kept["kilo.squat.ai/location"], "aws");
        // A node without a pod CIDR yet.
        let bare: MeshNode = serde_json::from_value(json!({"metadata": {"name": "b"}})).unwrap();
        assert!(NodeView::pod_cidrs(&bare).is_empty());
        assert_eq!(
            MeshNode::url_path(&(), None),
            "/api/v1/nodes",
            "the same API path as a Node"
        );
    }
}
