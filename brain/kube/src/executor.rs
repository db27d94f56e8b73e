//! The Kubernetes executor's plan and its hands: what the placements want
//! against the pods the reflector sees, and the API calls that close the
//! gap.
//!
//! Two kinds of pod carry a placement's name (the `vagus.dev/workload`
//! label): the brain's own, made from its manifest for a placement it
//! decided (it creates them, and deletes them once the placement is gone
//! or has moved), and those kube-scheduler bound through the extender (the
//! user's: a deleted one means its workload ended, so the placement goes).

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use std::collections::{BTreeMap, BTreeSet};
use vagus_decision::manifest::WORKLOAD_LABEL;

/// A pod as the plan reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSeen {
    pub namespace: String,
    pub name: String,
    pub workload: String,
    pub node: Option<String>,
    /// The brain made it (`app.kubernetes.io/managed-by: vagus`).
    pub owned: bool,
    /// Being deleted already.
    pub deleting: bool,
    /// Its `Ready` condition is `True` (it may take requests).
    pub ready: bool,
}

/// The label of a scale-out placeholder (`"true"`).
pub const PLACEHOLDER_LABEL: &str = "vagus.dev/scale-out";

impl PodSeen {
    /// `None` for a pod without a placement's label.
    pub fn of(pod: &Pod) -> Option<PodSeen> {
        let m = &pod.metadata;
        let labels = m.labels.as_ref()?;
        Some(PodSeen {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone()?,
            workload: labels.get(WORKLOAD_LABEL)?.clone(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            owned: labels
                .get("app.kubernetes.io/managed-by")
                .is_some_and(|v| v == "vagus"),
            deleting: m.deletion_timestamp.is_some(),
            ready: pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        })
    }
}

/// A pod the brain wants for a placement it decided: its manifest.
pub struct Wanted {
    pub workload: String,
    pub pod: Pod,
}

/// What one round does.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A placement's pod is missing: create it.
    Create(Box<Pod>),
    /// A pod of the brain's that no placement wants here any more (removed,
    /// or moved to another node): delete it, gracefully.
    Delete { namespace: String, name: String },
    /// A placement kube-scheduler bound whose pod is gone: the placement
    /// goes too.
    Gone { workload: String },
}

/// The steps from `wanted` (the pods the brain wants: its placements'
/// manifests, bound to their nodes, and scale-out placeholders, for any
/// node), `bound` (placements kube-scheduler bound, with whether their pod
/// was ever seen or is old enough that it should have been) and `seen`
/// (the reflector's pods).
pub fn plan(wanted: &[Wanted], bound: &BTreeMap<String, bool>, seen: &[PodSeen]) -> Vec<Step> {
    let mut steps = Vec::new();
    let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    let key = |p: &Pod| {
        (
            p.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            p.metadata.name.clone().unwrap_or_default(),
        )
    };
    // A pod's name is its placement's: one that moved is made again once
    // its old pod is gone.
    for w in wanted {
        let (ns, name) = key(&w.pod);
        if !seen.iter().any(|s| s.namespace == ns && s.name == name) {
            steps.push(Step::Create(Box::new(w.pod.clone())));
        }
    }
    for s in seen.iter().filter(|s| s.owned && !s.deleting) {
        let want = wanted
            .iter()
            .find(|w| key(&w.pod) == (s.namespace.clone(), s.name.clone()));
        let wanted_here = match want {
            None => false,
            // Bound to a node: there; a placeholder: wherever it went.
            Some(w) => node_of(&w.pod).is_none() || node_of(&w.pod) == s.node,
        };
        if !wanted_here {
            steps.push(Step::Delete {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            });
        }
    }
    let live: BTreeSet<&str> = seen
        .iter()
        .filter(|s| !s.owned && !s.deleting)
        .map(|s| s.workload.as_str())
        .collect();
    for (w, expected) in bound {
        if *expected && !live.contains(w.as_str()) {
            steps.push(Step::Gone {
                workload: w.clone(),
            });
        }
    }
    steps
}

/// Why a node is not ready, if Kubernetes says it is not (its `Ready`
/// condition is not `True`, or it is being deleted).
pub fn not_ready(n: &Node) -> Option<String> {
    if n.metadata.deletion_timestamp.is_some() {
        return Some("Kubernetes is deleting the node".into());
    }
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!(
            "Kubernetes reports the node not ready ({}{})",
            c.reason.as_deref().unwrap_or("Ready is not True"),
            c.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )),
        None => None,
    }
}

/// A name Kubernetes takes for an object (a DNS label): lowercase
/// letters, digits and `-`, at most 63.
pub fn dns_label(s: &str) -> String {
    let v: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    v.trim_matches('-').to_string()
}

/// The Service of one replica (its pod, by the placement's label): what a
/// route's backend names.
pub fn service(workload: &str, namespace: &str, port: u16) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": workload, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "vagus", WORKLOAD_LABEL: workload}},
        "spec": {"selector": {WORKLOAD_LABEL: workload},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]}
    }))
    .expect("a Service")
}

/// The node label that names a node group's GPU family (`H100`, `A100`,
/// …, as the brain's scale-out shapes do): put it on the Cluster
/// Autoscaler node groups' templates or the Karpenter NodePools that make
/// GPU nodes, so a placeholder's selector finds the group to grow.
pub const GPU_FAMILY_LABEL: &str = "vagus.dev/gpu-family";

/// A scale-out placeholder: a pod that asks for what the queued workload
/// needs on a node of the shape the core chose (its GPU family by node
/// selector), which no node has, so Cluster Autoscaler or Karpenter adds
/// one. It runs nothing (the pause image) and goes once the workload is
/// placed.
pub fn placeholder(
    workload: &str,
    namespace: &str,
    gpu_family: &str,
    gpus: u32,
    cpu_milli: u64,
    memory_mib: u64,
) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": dns_label(&format!("vagus-scale-out-{workload}")), "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "vagus", WORKLOAD_LABEL: workload,
                PLACEHOLDER_LABEL: "true"}},
        "spec": {
            "nodeSelector": {GPU_FAMILY_LABEL: gpu_family},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "placeholder", "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": format!("{cpu_milli}m"), "memory": format!("{memory_mib}Mi"),
                    "nvidia.com/gpu": gpus.to_string()},
                    "limits": {"nvidia.com/gpu": gpus.to_string()}}}]
        }
    }))
    .expect("a Pod")
}

/// One route backend: a replica's Service and its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub service: String,
    pub weight: u32,
}

/// The HTTPRoute name of a model.
pub fn route_name(model: &str) -> String {
    dns_label(&format!("vagus-{model}"))
}

/// A model's HTTPRoute (Gateway API v1) on `gateway`: its replicas'
/// Services, weighted as the brain routes (a canary's share, a draining
/// replica's 0).
pub fn http_route(
    model: &str,
    namespace: &str,
    gateway: &str,
    port: u16,
    backends: &[Backend],
) -> serde_json::Value {
    let refs: Vec<serde_json::Value> = backends
        .iter()
        .map(|b| serde_json::json!({"name": b.service, "port": port, "weight": b.weight}))
        .collect();
    serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": route_name(model), "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "vagus"}},
        "spec": {
            "parentRefs": [{"name": gateway}],
            "rules": [{
                "matches": [{"headers": [{"name": "x-vagus-model", "value": model}]}],
                "backendRefs": refs
            }]
        }
    })
}

fn http_routes(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "httproutes");
    Api::namespaced_with(client.clone(), namespace, &ar)
}

/// The API calls of the steps.
#[derive(Clone)]
pub struct Applier {
    client: kube::Client,
    /// Seconds a deleted pod has to finish its requests (its `SIGTERM`
    /// to `SIGKILL`).
    pub grace_s: u32,
}

impl Applier {
    pub fn new(client: kube::Client, grace_s: u32) -> Applier {
        Applier { client, grace_s }
    }

    pub async fn create(&self, pod: &Pod) -> Result<(), String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match api.create(&PostParams::default(), pod).await {
            Ok(_) => Ok(()),
            // There already (a round ahead of the reflector): the next
            // round sees it.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(format!("creating pod {ns}/{name}: {e}")),
        }
    }

    pub async fn delete(&self, namespace: &str, name: &str) -> Result<(), String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(self.grace_s),
            ..DeleteParams::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(format!("deleting pod {namespace}/{name}: {e}")),
        }
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Creates a replica's Service (there already: nothing to do).
    pub async fn create_service(&self, svc: &Service) -> Result<(), String> {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.clone().unwrap_or_default();
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        match api.create(&PostParams::default(), svc).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(format!("creating service {ns}/{name}: {e}")),
        }
    }

    pub async fn delete_service(&self, namespace: &str, name: &str) -> Result<(), String> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(format!("deleting service {namespace}/{name}: {e}")),
        }
    }

    /// Server-side applies a model's HTTPRoute (the brain owns its
    /// backends' weights).
    pub async fn apply_route(
        &self,
        namespace: &str,
        route: &serde_json::Value,
    ) -> Result<(), String> {
        let name = route["metadata"]["name"].as_str().unwrap_or_default();
        let pp = PatchParams::apply("vagus-brain").force();
        http_routes(&self.client, namespace)
            .patch(name, &pp, &Patch::Apply(route))
            .await
            .map(drop)
            .map_err(|e| format!("applying HTTPRoute {namespace}/{name}: {e}"))
    }

    pub async fn delete_route(&self, namespace: &str, name: &str) -> Result<(), String> {
        match http_routes(&self.client, namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(format!("deleting HTTPRoute {namespace}/{name}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(workload: &str, node: &str, owned: bool) -> PodSeen {
        PodSeen {
            namespace: "default".into(),
            name: workload.into(),
            workload: workload.into(),
            node: Some(node.into()),
            owned,
            deleting: false,
            ready: true,
        }
    }

    fn wanted(workload: &str, node: &str) -> Wanted {
        Wanted {
            workload: workload.into(),
            pod: serde_json::from_value(serde_json::json!({
                "metadata": {"name": workload, "namespace": "default"},
                "spec": {"nodeName": node, "containers": []}
            }))
            .unwrap(),
        }
    }

    #[test]
    fn creates_the_missing_deletes_the_unwanted_and_moved() {
        let steps = plan(
            &[wanted("a", "n1"), wanted("b", "n2")],
            &BTreeMap::new(),
            &[
                pod("b", "n1", true),
                pod("c", "n1", true),
                pod("x", "n1", false),
            ],
        );
        let kinds: Vec<String> = steps
            .iter()
            .map(|s| match s {
                Step::Create(p) => format!("create {}", p.metadata.name.as_deref().unwrap()),
                Step::Delete { name, .. } => format!("delete {name}"),
                Step::Gone { workload } => format!("gone {workload}"),
            })
            .collect();
        // b moved: its old pod goes first, the new one comes next round.
        assert_eq!(kinds, ["create a", "delete b", "delete c"]);
    }

    #[test]
    fn a_bound_placement_goes_only_once_its_pod_was_expected() {
        let seen = [pod("live", "n1", false)];
        let bound = BTreeMap::from([
            ("live".to_string(), true),
            ("young".to_string(), false),
            ("deleted".to_string(), true),
        ]);
        assert_eq!(
            plan(&[], &bound, &seen),
            [Step::Gone {
                workload: "deleted".into()
            }]
        );
    }
}
