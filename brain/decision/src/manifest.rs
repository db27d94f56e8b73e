//! The Kubernetes Pod a placement binds.

use crate::state::Placed;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, HostPathVolumeSource, Pod, PodSpec, ResourceRequirements,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// Where manifests put things; from the brain's configuration.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestConfig {
    pub namespace: String,
    /// Image when the request names none.
    pub default_image: String,
    /// The shim inside the container (`LD_PRELOAD`).
    pub shim_path: String,
    /// Where the shim writes its telemetry segment (a hostPath the agent reads).
    pub segment_dir: String,
    /// The port its containers serve on (the Service of each replica, the
    /// routes' backends).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The Gateway API `Gateway` (in `namespace`) each model's HTTPRoute
    /// attaches to; none: no HTTPRoutes are made.
    #[serde(default)]
    pub gateway: Option<String>,
}

fn default_port() -> u16 {
    8000
}

impl Default for ManifestConfig {
    fn default() -> ManifestConfig {
        ManifestConfig {
            namespace: "default".into(),
            default_image: "vllm/vllm-openai:latest".into(),
            shim_path: "/opt/vagus/lib/libvagus_shim.so".into(),
            segment_dir: "/run/vagus".into(),
            port: default_port(),
            gateway: None,
        }
    }
}

pub const MPS_ANNOTATION: &str = "mps.nvidia.com/config";
/// The label every pod of a Vagus placement carries: the placement's name
/// (the brain's own pods, and those kube-scheduler bound through it).
pub const WORKLOAD_LABEL: &str = "vagus.dev/workload";
pub const PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// MPS share, in percent of one GPU.
pub const MPS_RESOURCE: &str = "nvidia.com/mps";

/// The Pod for `p` on its node: bound by `nodeName`, kept to the GPU model
/// by `nodeSelector`, with the MPS share in its resources, annotation and
/// environment, and the shim preloaded.
///
/// `gpu`: the product label of its (first) GPU and that GPU's MPS pool;
/// `None` for a workload without GPUs (no GPU resources, MPS or shim).
pub fn pod(p: &Placed, gpu: Option<(&str, Option<u32>)>, cfg: &ManifestConfig) -> Pod {
    let shared = p.gpus.len() == 1 && p.share_pct < 100;
    let mut limits = BTreeMap::new();
    if gpu.is_some() {
        limits.insert(GPU_RESOURCE.to_string(), Quantity(p.gpus.len().to_string()));
    }
    if shared && gpu.is_some() {
        limits.insert(MPS_RESOURCE.to_string(), Quantity(p.share_pct.to_string()));
    }
    let mut requests = limits.clone();
    requests.insert("cpu".into(), Quantity(format!("{}m", p.profile.cpu_milli)));
    requests.insert(
        "memory".into(),
        Quantity(format!("{}Mi", p.profile.memory_mib)),
    );
    let annotations = gpu.map(|(_, pool)| {
        let config = serde_json::json!({
            "gpus": p.gpus,
            "activeThreadPercentage": p.share_pct,
            "pool": pool,
            "exclusive": !shared,
        });
        BTreeMap::from([(MPS_ANNOTATION.to_string(), config.to_string())])
    });
    let env = |k: &str, v: String| EnvVar {
        name: k.into(),
        value: Some(v),
        ..Default::default()
    };
    let mut labels = BTreeMap::new();
    labels.insert("app.kubernetes.io/managed-by".into(), "vagus".into());
    labels.insert(WORKLOAD_LABEL.into(), p.id.clone());
    labels.insert("vagus.dev/model".into(), label_value(&p.profile.model_id));
    labels.insert("vagus.dev/tenant".into(), label_value(&p.profile.tenant));
    labels.insert("vagus.dev/class".into(), p.class.name.clone());
    labels.insert(
        "vagus.dev/priority".into(),
        format!("{:?}", p.profile.priority),
    );
    Pod {
        metadata: ObjectMeta {
            name: Some(p.id.clone()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(labels),
            annotations,
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(p.node.clone()),
            node_selector: gpu.map(|(product, _)| {
                BTreeMap::from([(PRODUCT_LABEL.to_string(), product.to_string())])
            }),
            host_ipc: (shared && gpu.is_some()).then_some(true),
            tolerations: gpu.map(|_| {
                vec![Toleration {
                    key: Some(GPU_RESOURCE.into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoSchedule".into()),
                    ..Default::default()
                }]
            }),
            containers: vec![Container {
                name: "inference".into(),
                image: Some(
                    p.profile
                        .image
                        .clone()
                        .unwrap_or_else(|| cfg.default_image.clone()),
                ),
                env: Some(match gpu {
                    Some(_) => vec![
                        env("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", p.share_pct.to_string()),
                        env("LD_PRELOAD", cfg.shim_path.clone()),
                        env("VAGUS_SHM_DIR", cfg.segment_dir.clone()),
                        env("VAGUS_MODEL_ID", p.profile.model_id.clone()),
                    ],
                    None => vec![env("VAGUS_MODEL_ID", p.profile.model_id.clone())],
                }),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: cfg.port as i32,
                    ..Default::default()
                }]),
                resources: Some(ResourceRequirements {
                    limits: Some(limits),
                    requests: Some(requests),
                    ..Default::default()
                }),
                // The shim's telemetry segment, where the node agent reads it.
                volume_mounts: gpu.map(|_| {
                    vec![VolumeMount {
                        name: "vagus-shm".into(),
                        mount_path: cfg.segment_dir.clone(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }],
            volumes: gpu.map(|_| {
                vec![Volume {
                    name: "vagus-shm".into(),
                    host_path: Some(HostPathVolumeSource {
                        path: cfg.segment_dir.clone(),
                        type_: Some("DirectoryOrCreate".into()),
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A label value: ≤ 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}
