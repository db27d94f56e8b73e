//! kube-scheduler's extender protocol, `k8s.io/kube-scheduler/extender/v1`.
//!
//! Those Go types carry no JSON tags, so their JSON names are the Go field
//! names (PascalCase); a nil pointer or map is `null`. With
//! `nodeCacheCapable: true` the scheduler sends and expects node names
//! only (`NodeNames`); otherwise whole `v1.Node` objects (`Nodes`).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The highest score an extender gives (`MaxExtenderPriority`).
pub const MAX_SCORE: i64 = 10;

/// A `v1.NodeList` as the scheduler builds it in memory (no `kind` or
/// `apiVersion`). Its nodes are kept as sent: those that pass go back
/// exactly so, with any field a newer Kubernetes added.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<serde_json::Value>,
}

/// A node's name as the list holds it.
pub fn node_name(n: &serde_json::Value) -> Option<&str> {
    n.pointer("/metadata/name")
        .and_then(serde_json::Value::as_str)
}

/// `ExtenderArgs`: the filter and prioritize verbs' request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderArgs {
    pub pod: Option<Pod>,
    /// Set when the extender is not node-cache capable.
    #[serde(default)]
    pub nodes: Option<NodeList>,
    /// Set when it is.
    #[serde(default)]
    pub node_names: Option<Vec<String>>,
}

impl ExtenderArgs {
    /// The candidate nodes' names, whichever way they came; `Err` when
    /// neither came.
    pub fn names(&self) -> Result<Vec<String>, &'static str> {
        match (&self.node_names, &self.nodes) {
            (Some(n), _) => Ok(n.clone()),
            (None, Some(l)) => Ok(l
                .items
                .iter()
                .map(|n| node_name(n).unwrap_or_default().to_string())
                .collect()),
            (None, None) => Err("neither Nodes nor NodeNames given"),
        }
    }

    /// Whether the scheduler caches nodes (it sent names only).
    pub fn cache_capable(&self) -> bool {
        self.node_names.is_some() && self.nodes.is_none()
    }
}

/// `FailedNodesMap`: node name → why it failed.
pub type FailedNodes = BTreeMap<String, String>;

/// `ExtenderFilterResult`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderFilterResult {
    pub nodes: Option<NodeList>,
    pub node_names: Option<Vec<String>>,
    /// Nodes that fail but might pass once pods are preempted.
    pub failed_nodes: Option<FailedNodes>,
    /// Nodes no preemption would help.
    pub failed_and_unresolvable_nodes: Option<FailedNodes>,
    pub error: String,
}

impl ExtenderFilterResult {
    /// The whole request failed.
    pub fn error(e: impl Into<String>) -> ExtenderFilterResult {
        ExtenderFilterResult {
            error: e.into(),
            ..Default::default()
        }
    }
}

/// `HostPriority`; the prioritize verb answers a `HostPriorityList`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostPriority {
    pub host: String,
    /// 0 to [`MAX_SCORE`].
    pub score: i64,
}

/// `ExtenderBindingArgs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingArgs {
    pub pod_name: String,
    pub pod_namespace: String,
    #[serde(rename = "PodUID")]
    pub pod_uid: String,
    pub node: String,
}

/// `ExtenderBindingResult`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingResult {
    pub error: String,
}

/// `MetaPod`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetaPod {
    #[serde(rename = "UID")]
    pub uid: String,
}

/// `Victims`: whole pods (a scheduler without the node cache).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Victims {
    #[serde(default)]
    pub pods: Vec<Pod>,
    #[serde(default, rename = "NumPDBViolations")]
    pub num_pdb_violations: i64,
}

/// `MetaVictims`: pods by UID.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetaVictims {
    #[serde(default)]
    pub pods: Vec<MetaPod>,
    #[serde(default, rename = "NumPDBViolations")]
    pub num_pdb_violations: i64,
}

/// `ExtenderPreemptionArgs`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderPreemptionArgs {
    pub pod: Option<Pod>,
    #[serde(default)]
    pub node_name_to_victims: Option<BTreeMap<String, Victims>>,
    #[serde(default)]
    pub node_name_to_meta_victims: Option<BTreeMap<String, MetaVictims>>,
}

impl ExtenderPreemptionArgs {
    /// Per node, its victims' UIDs (and PDB violations), whichever way
    /// they came.
    pub fn victims(&self) -> BTreeMap<String, MetaVictims> {
        if let Some(m) = &self.node_name_to_meta_victims {
            return m.clone();
        }
        self.node_name_to_victims
            .iter()
            .flatten()
            .map(|(node, v)| {
                let pods = v
                    .pods
                    .iter()
                    .map(|p| MetaPod {
                        uid: p.metadata.uid.clone().unwrap_or_default(),
                    })
                    .collect();
                (
                    node.clone(),
                    MetaVictims {
                        pods,
                        num_pdb_violations: v.num_pdb_violations,
                    },
                )
            })
            .collect()
    }
}

/// `ExtenderPreemptionResult`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderPreemptionResult {
    pub node_name_to_meta_victims: Option<BTreeMap<String, MetaVictims>>,
}

/// Scores on the extender's 0–10 scale: the best node 10, the worst 0,
/// the rest in proportion (all alike: all 10). `scores` are the core's.
pub fn scale(scores: &[f64]) -> Vec<i64> {
    let lo = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    scores
        .iter()
        .map(|s| {
            if hi - lo < 1e-9 {
                MAX_SCORE
            } else {
                ((s - lo) / (hi - lo) * MAX_SCORE as f64).round() as i64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_field_names_both_ways() {
        let args: ExtenderArgs = serde_json::from_str(
            r#"{"Pod":{"metadata":{"name":"p"}},"Nodes":null,"NodeNames":["a","b"]}"#,
        )
        .unwrap();
        assert_eq!(args.names().unwrap(), ["a", "b"]);
        assert!(args.cache_capable());
        let r = ExtenderFilterResult {
            node_names: Some(vec!["a".into()]),
            failed_nodes: Some(BTreeMap::from([("b".into(), "capacity".into())])),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"Nodes": null, "NodeNames": ["a"],
                "FailedNodes": {"b": "capacity"}, "FailedAndUnresolvableNodes": null, "Error": ""})
        );
        let b: ExtenderBindingArgs = serde_json::from_str(
            r#"{"PodName":"p","PodNamespace":"ns","PodUID":"u-1","Node":"n"}"#,
        )
        .unwrap();
        assert_eq!(b.pod_uid, "u-1");
    }

    #[test]
    fn scale_spans_zero_to_ten() {
        assert_eq!(scale(&[0.2, 0.7, 0.45]), [0, 10, 5]);
        assert_eq!(scale(&[0.3, 0.3]), [10, 10]);
        assert_eq!(scale(&[]), Vec::<i64>::new());
    }
}
