//! A Pod read as the workload the decision core places.
//!
//! What the core needs and a Pod does not say in its own fields comes from
//! annotations (`vagus.dev/…`); the share from the seed's
//! `mps.nvidia.com/config: compute-<percent>` or the `nvidia.com/mps`
//! resource; GPUs from `nvidia.com/gpu`; CPU and memory from the
//! containers' requests. Errors name the Pod's field that is wrong.

use k8s_openapi::api::core::v1::{Container, Pod};
use kube_quantity::ParsedQuantity;
use std::collections::BTreeMap;
use vagus_decision::manifest::{GPU_RESOURCE, MPS_ANNOTATION, MPS_RESOURCE};
use vagus_decision::{Invalid, Priority, Profile};

/// Annotations a pod may set for the core (all optional).
pub const MODEL: &str = "vagus.dev/model";
pub const MODEL_GB: &str = "vagus.dev/model-gb";
pub const GPU_MEMORY_GB: &str = "vagus.dev/gpu-memory-gb";
pub const BATCH: &str = "vagus.dev/batch";
pub const SEQ_LEN: &str = "vagus.dev/seq-len";
pub const PRIORITY: &str = "vagus.dev/priority";
pub const SLA_MS: &str = "vagus.dev/sla-ms";
pub const DURATION_S: &str = "vagus.dev/expected-duration-s";
pub const MAX_COST: &str = "vagus.dev/max-cost-per-hour";
pub const PREEMPTIBLE: &str = "vagus.dev/preemptible";

/// Annotations a bind writes: the placement's name, GPUs and share.
pub const WORKLOAD: &str = "vagus.dev/workload";
pub const GPUS: &str = "vagus.dev/gpus";
/// The share in percent; the webhook points the containers'
/// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` at it (the downward API), so it
/// reaches them when they start, after the bind.
pub const SHARE_PCT: &str = "vagus.dev/share-pct";

/// Defaults where a pod says nothing.
const DEFAULT_BATCH: u32 = 8;
const DEFAULT_SEQ_LEN: u32 = 2048;
const DEFAULT_DURATION_S: u64 = 3600;

/// The workload's name for a pod: `<namespace>-<name>` (the core's names
/// are DNS labels, one namespace).
pub fn workload_name(namespace: &str, name: &str) -> String {
    format!("{namespace}-{name}")
}

/// Whether a pod asks for a GPU or a share of one (what the webhook and
/// the scheduler act on).
pub fn wants_gpu(pod: &Pod) -> bool {
    annotation(pod, MPS_ANNOTATION).is_some() || containers(pod).any(wants_gpu_container)
}

/// Whether a container asks for a GPU or a share of one.
pub fn wants_gpu_container(c: &Container) -> bool {
    let r = c.resources.as_ref();
    [
        r.and_then(|r| r.limits.as_ref()),
        r.and_then(|r| r.requests.as_ref()),
    ]
    .into_iter()
    .flatten()
    .any(|m| m.contains_key(GPU_RESOURCE) || m.contains_key(MPS_RESOURCE))
}

fn containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec.iter().flat_map(|s| s.containers.iter())
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn annotation_field(key: &str) -> String {
    format!("metadata.annotations[\"{key}\"]")
}

fn parse_annotation<T: std::str::FromStr>(pod: &Pod, key: &str) -> Result<Option<T>, Invalid> {
    annotation(pod, key)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| Invalid::new(&annotation_field(key), &format!("cannot read {v:?}")))
        })
        .transpose()
}

/// The profile the core places for `pod`.
pub fn profile(pod: &Pod) -> Result<Profile, Invalid> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod
        .metadata
        .name
        .as_deref()
        .ok_or_else(|| Invalid::new("metadata.name", "required"))?;
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Invalid::new("spec", "required"))?;
    let workload = workload_name(namespace, name);
    let (cpu_milli, memory_mib) = requested(&spec.containers)?;
    let gpus = resource_total(&spec.containers, GPU_RESOURCE)?;
    let mps = resource_total(&spec.containers, MPS_RESOURCE)?;
    let asked = match annotation(pod, MPS_ANNOTATION) {
        Some(v) => Some(compute_share(v).ok_or_else(|| {
            Invalid::new(
                &annotation_field(MPS_ANNOTATION),
                &format!("{v:?} is not compute-<percent 1-100>"),
            )
        })?),
        None => None,
    };
    let share_pct = match (asked, mps) {
        (Some(a), Some(m)) if a as u64 != m => {
            return Err(Invalid::new(
                &format!("spec.containers[].resources.limits[\"{MPS_RESOURCE}\"]"),
                &format!("{m} disagrees with {MPS_ANNOTATION}: compute-{a}"),
            ));
        }
        (Some(a), _) => Some(a),
        (None, Some(m)) => Some(u32::try_from(m).unwrap_or(u32::MAX)),
        (None, None) => None,
    };
    // A share asks for one GPU even when nvidia.com/gpu is left out.
    let gpus = match (gpus, share_pct) {
        (Some(g), _) => u32::try_from(g).unwrap_or(u32::MAX),
        (None, Some(_)) => 1,
        (None, None) => 0,
    };
    let model_id = match annotation(pod, MODEL) {
        Some(m) => m.to_string(),
        None => pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/name").or_else(|| l.get("app")))
            .cloned()
            .unwrap_or_else(|| workload.clone()),
    };
    let priority = match annotation(pod, PRIORITY) {
        None => Priority::P2,
        Some(v) => serde_json::from_value(serde_json::Value::String(v.trim().to_string()))
            .map_err(|_| {
                Invalid::new(
                    &annotation_field(PRIORITY),
                    &format!("{v:?} is not P0, P1, P2 or P3"),
                )
            })?,
    };
    let p = Profile {
        name: workload,
        model_id,
        model_size_gb: parse_annotation(pod, MODEL_GB)?.unwrap_or(0.0),
        batch: parse_annotation(pod, BATCH)?.unwrap_or(DEFAULT_BATCH),
        seq_len: parse_annotation(pod, SEQ_LEN)?.unwrap_or(DEFAULT_SEQ_LEN),
        priority,
        sla_ms: parse_annotation(pod, SLA_MS)?,
        tenant: namespace.to_string(),
        expected_duration_s: parse_annotation(pod, DURATION_S)?.unwrap_or(DEFAULT_DURATION_S),
        locality: Vec::new(),
        accepted_models: Vec::new(),
        cpu_milli,
        memory_mib,
        gpus: Some(gpus),
        share_pct,
        gpu_memory_gb: parse_annotation(pod, GPU_MEMORY_GB)?,
        max_cost_per_hour: parse_annotation(pod, MAX_COST)?,
        preemptible: parse_annotation(pod, PREEMPTIBLE)?,
        image: spec.containers.first().and_then(|c| c.image.clone()),
        launch: None,
    };
    p.validate().map_err(|e| Invalid {
        field: pod_field(&e.field),
        problem: e.problem,
    })?;
    Ok(p)
}

/// The Pod's field a profile's field came from.
fn pod_field(profile_field: &str) -> String {
    let key = match profile_field {
        "name" => return "metadata.name (with its namespace, a DNS label ≤ 63)".into(),
        "tenant" => return "metadata.namespace".into(),
        "image" => return "spec.containers[0].image".into(),
        "cpu_milli" => return "spec.containers[].resources.requests.cpu".into(),
        "memory_mib" => return "spec.containers[].resources.requests.memory".into(),
        "gpus" => return format!("spec.containers[].resources.limits[\"{GPU_RESOURCE}\"]"),
        "share_pct" => return annotation_field(MPS_ANNOTATION),
        "model_id" => MODEL,
        "model_size_gb" => MODEL_GB,
        "gpu_memory_gb" => GPU_MEMORY_GB,
        "batch" => BATCH,
        "seq_len" => SEQ_LEN,
        "sla_ms" => SLA_MS,
        "expected_duration_s" => DURATION_S,
        "max_cost_per_hour" => MAX_COST,
        other => return other.to_string(),
    };
    annotation_field(key)
}

/// `compute-20` → 20.
fn compute_share(v: &str) -> Option<u32> {
    let pct: u32 = v.trim().strip_prefix("compute-")?.parse().ok()?;
    (1..=100).contains(&pct).then_some(pct)
}

/// A container's request for a resource, else its limit (a limit alone
/// is also the request, as the API server defaults it).
fn asked<'a>(c: &'a Container, resource: &str) -> Option<&'a str> {
    let r = c.resources.as_ref()?;
    r.requests
        .as_ref()
        .and_then(|m| m.get(resource))
        .or_else(|| r.limits.as_ref().and_then(|m| m.get(resource)))
        .map(|q| q.0.as_str())
}

fn quantity(field: String, v: &str) -> Result<f64, Invalid> {
    ParsedQuantity::try_from(v)
        .ok()
        .and_then(|q| q.to_bytes_f64())
        .filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| Invalid::new(&field, &format!("{v:?} is not a quantity")))
}

/// The containers' CPU (millicores) and memory (MiB) requests, summed.
fn requested(containers: &[Container]) -> Result<(u64, u64), Invalid> {
    let (mut cpu, mut mem) = (0.0, 0.0);
    for (i, c) in containers.iter().enumerate() {
        if let Some(v) = asked(c, "cpu") {
            cpu += quantity(format!("spec.containers[{i}].resources.requests.cpu"), v)?;
        }
        if let Some(v) = asked(c, "memory") {
            mem += quantity(format!("spec.containers[{i}].resources.requests.memory"), v)?;
        }
    }
    Ok((
        (cpu * 1000.0).ceil() as u64,
        (mem / (1 << 20) as f64).ceil() as u64,
    ))
}

/// An extended resource summed over the containers (whole numbers only);
/// `None` when no container names it.
fn resource_total(containers: &[Container], resource: &str) -> Result<Option<u64>, Invalid> {
    let mut total = None;
    for (i, c) in containers.iter().enumerate() {
        if let Some(v) = asked(c, resource) {
            let field = format!("spec.containers[{i}].resources.limits[\"{resource}\"]");
            let n = quantity(field.clone(), v)?;
            if n.fract() != 0.0 {
                return Err(Invalid::new(
                    &field,
                    &format!("{v:?} is not a whole number"),
                ));
            }
            *total.get_or_insert(0) += n as u64;
        }
    }
    Ok(total)
}

/// The annotations a bind writes on the pod it placed.
pub fn placed_annotations(
    workload: &str,
    gpus: &[u32],
    share_pct: u32,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (WORKLOAD.to_string(), workload.to_string()),
        (
            GPUS.to_string(),
            gpus.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        (SHARE_PCT.to_string(), share_pct.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: serde_json::Value, resources: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "chat-0", "namespace": "team-a", "annotations": annotations,
                "labels": {"app": "llama-8b"}},
            "spec": {"containers": [{"name": "c", "image": "vllm/vllm-openai:v0.6.3",
                "resources": resources}]}
        }))
        .unwrap()
    }

    #[test]
    fn the_seed_shape_becomes_a_profile() {
        let p = profile(&pod(
            serde_json::json!({"mps.nvidia.com/config": "compute-20", "vagus.dev/model-gb": "16",
                "vagus.dev/priority": "P1", "vagus.dev/sla-ms": "200"}),
            serde_json::json!({"limits": {"nvidia.com/gpu": "1", "nvidia.com/mps": "20"},
                "requests": {"cpu": "1500m", "memory": "8Gi"}}),
        ))
        .unwrap();
        assert_eq!(p.name, "team-a-chat-0");
        assert_eq!(p.tenant, "team-a");
        assert_eq!(p.model_id, "llama-8b");
        assert_eq!((p.gpus, p.share_pct), (Some(1), Some(20)));
        assert_eq!((p.cpu_milli, p.memory_mib), (1500, 8192));
        assert_eq!(
            (p.priority, p.sla_ms, p.model_size_gb),
            (Priority::P1, Some(200), 16.0)
        );
    }

    #[test]
    fn bad_input_names_the_pods_field() {
        let e = profile(&pod(
            serde_json::json!({"mps.nvidia.com/config": "compute-200"}),
            serde_json::json!({}),
        ))
        .unwrap_err();
        assert_eq!(e.field, "metadata.annotations[\"mps.nvidia.com/config\"]");
        let e = profile(&pod(
            serde_json::json!({"mps.nvidia.com/config": "compute-20"}),
            serde_json::json!({"limits": {"nvidia.com/mps": "30"}}),
        ))
        .unwrap_err();
        assert!(e.problem.contains("disagrees"), "{e}");
        let e = profile(&pod(
            serde_json::json!({}),
            serde_json::json!({"requests": {"cpu": "lots"}}),
        ))
        .unwrap_err();
        assert_eq!(e.field, "spec.containers[0].resources.requests.cpu");
        let e = profile(&pod(
            serde_json::json!({"vagus.dev/batch": "0"}),
            serde_json::json!({"limits": {"nvidia.com/gpu": "1"}}),
        ))
        .unwrap_err();
        assert_eq!(e.field, "metadata.annotations[\"vagus.dev/batch\"]");
        let e = profile(&pod(
            serde_json::json!({"vagus.dev/priority": "urgent"}),
            serde_json::json!({}),
        ))
        .unwrap_err();
        assert!(e.problem.contains("P0"), "{e}");
    }

    #[test]
    fn a_pod_without_gpus_asks_for_none() {
        let p = pod(
            serde_json::json!({}),
            serde_json::json!({"requests": {"cpu": "2"}}),
        );
        assert!(!wants_gpu(&p));
        let p = profile(&p).unwrap();
        assert_eq!((p.gpus, p.share_pct, p.cpu_milli), (Some(0), None, 2000));
    }
}
