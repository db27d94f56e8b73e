//! The mutating admission webhook: a pod that asks for a GPU (or a share
//! of one) is sent to Vagus's scheduler and gets the shim — preloaded from
//! the directory the node's agent fills, its telemetry segment directory,
//! and the MPS control daemon's pipe directory — with its MPS share read
//! from the annotation the bind writes. Other pods, and pods labelled
//! `vagus.dev/inject: "false"`, pass unchanged. Served over HTTPS
//! (rustls), as the API server requires.

use crate::pod::{self, SHARE_PCT};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::{Value, json};
use std::sync::Arc;
use vagus_decision::manifest::MPS_ANNOTATION;

/// The label that opts a pod out.
pub const OPT_OUT_LABEL: &str = "vagus.dev/inject";
/// Names of what the webhook adds (also how it knows it already did).
pub const SHIM_VOLUME: &str = "vagus-shim";
pub const SEGMENT_VOLUME: &str = "vagus-segments";
pub const MPS_VOLUME: &str = "vagus-mps-pipe";

/// Where things are, on the node and in the container.
#[derive(Clone, Debug, PartialEq)]
pub struct Injection {
    /// The scheduler GPU pods go to (the kube-scheduler with Vagus's
    /// extender).
    pub scheduler_name: String,
    /// The node's directory holding `libvagus_shim.so` (the agent's
    /// DaemonSet copies it there); mounted read-only at [`Self::shim_dir`].
    pub shim_host_dir: String,
    pub shim_dir: String,
    /// The shim's telemetry segments, where the node agent reads them (the
    /// same path on the node and in the container).
    pub segment_dir: String,
    /// The MPS control daemon's pipe directory (same path both sides).
    pub mps_pipe_dir: String,
}

impl Default for Injection {
    fn default() -> Injection {
        Injection {
            scheduler_name: "vagus-scheduler".into(),
            shim_host_dir: "/var/lib/vagus/lib".into(),
            shim_dir: "/opt/vagus/lib".into(),
            segment_dir: "/run/vagus".into(),
            mps_pipe_dir: "/tmp/nvidia-mps".into(),
        }
    }
}

impl Injection {
    fn shim(&self) -> String {
        format!("{}/libvagus_shim.so", self.shim_dir.trim_end_matches('/'))
    }
}

/// Where a container's own `LD_PRELOAD`, when it comes from a reference,
/// is moved so that the shim can go before it.
pub const PRELOAD_FROM: &str = "VAGUS_PRELOAD_FROM";

/// The JSON patch (RFC 6902 operations) for `pod`; empty when it passes
/// unchanged.
pub fn patch(pod: &Pod, cfg: &Injection) -> Vec<Value> {
    let opted_out = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(OPT_OUT_LABEL))
        .is_some_and(|v| v == "false");
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let injected = spec.volumes.iter().flatten().any(|v| v.name == SHIM_VOLUME);
    if opted_out || injected || !pod::wants_gpu(pod) {
        return Vec::new();
    }
    let mut ops =
        vec![json!({"op": "add", "path": "/spec/schedulerName", "value": cfg.scheduler_name})];
    let shares = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MPS_ANNOTATION))
        || spec.containers.iter().any(|c| {
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|l| l.contains_key(vagus_decision::manifest::MPS_RESOURCE))
        });
    if shares {
        // An MPS client shares the control daemon's IPC namespace.
        ops.push(json!({"op": "add", "path": "/spec/hostIPC", "value": true}));
    }
    let volumes = [
        (SHIM_VOLUME, &cfg.shim_host_dir, "Directory"),
        (SEGMENT_VOLUME, &cfg.segment_dir, "DirectoryOrCreate"),
        (MPS_VOLUME, &cfg.mps_pipe_dir, "DirectoryOrCreate"),
    ]
    .map(|(name, path, kind)| json!({"name": name, "hostPath": {"path": path, "type": kind}}));
    append(&mut ops, "/spec/volumes", spec.volumes.is_some(), volumes);
    // The containers that ask for the GPU; all of them when only the
    // pod's annotation asks.
    let any = spec.containers.iter().any(pod::wants_gpu_container);
    for (i, c) in spec.containers.iter().enumerate() {
        if any && !pod::wants_gpu_container(c) {
            continue;
        }
        let base = format!("/spec/containers/{i}");
        let mut env = vec![
            json!({"name": "VAGUS_SHM_DIR", "value": cfg.segment_dir}),
            json!({"name": "CUDA_MPS_PIPE_DIRECTORY", "value": cfg.mps_pipe_dir}),
            json!({"name": "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "valueFrom": {"fieldRef":
                {"fieldPath": format!("metadata.annotations['{SHARE_PCT}']")}}}),
        ];
        let preload = c.env.iter().flatten().position(|e| e.name == "LD_PRELOAD");
        match preload.map(|k| (k, &c.env.as_ref().unwrap()[k])) {
            Some((k, e)) => match (&e.value, &e.value_from) {
                // Theirs kept, after the shim.
                (Some(v), _) => ops.push(
                    json!({"op": "replace", "path": format!("{base}/env/{k}/value"),
                    "value": format!("{} {v}", cfg.shim())}),
                ),
                // A value from a reference (a ConfigMap, a Secret, a field)
                // moves to a variable of its own, just before, which the
                // kubelet expands into LD_PRELOAD (`$(VAR)` names a
                // variable defined earlier in the list).
                (None, Some(from)) => {
                    ops.push(json!({"op": "replace", "path": format!("{base}/env/{k}"),
                        "value": {"name": "LD_PRELOAD",
                            "value": format!("{} $({PRELOAD_FROM})", cfg.shim())}}));
                    ops.push(json!({"op": "add", "path": format!("{base}/env/{k}"),
                        "value": {"name": PRELOAD_FROM, "valueFrom": from}}));
                }
                (None, None) => ops.push(
                    json!({"op": "replace", "path": format!("{base}/env/{k}/value"),
                    "value": cfg.shim()}),
                ),
            },
            None => env.insert(0, json!({"name": "LD_PRELOAD", "value": cfg.shim()})),
        }
        append(&mut ops, &format!("{base}/env"), c.env.is_some(), env);
        let mounts = [
            json!({"name": SHIM_VOLUME, "mountPath": cfg.shim_dir, "readOnly": true}),
            json!({"name": SEGMENT_VOLUME, "mountPath": cfg.segment_dir}),
            json!({"name": MPS_VOLUME, "mountPath": cfg.mps_pipe_dir}),
        ];
        append(
            &mut ops,
            &format!("{base}/volumeMounts"),
            c.volume_mounts.is_some(),
            mounts,
        );
    }
    ops
}

/// Adds `items` to the array at `path`: one `add` of the whole array where
/// there is none yet, else one `add` at its end per item.
fn append(ops: &mut Vec<Value>, path: &str, exists: bool, items: impl IntoIterator<Item = Value>) {
    if exists {
        for v in items {
            ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": v}));
        }
    } else {
        let all: Vec<Value> = items.into_iter().collect();
        ops.push(json!({"op": "add", "path": path, "value": all}));
    }
}

/// The answer to one AdmissionReview.
pub fn review(body: Value, cfg: &Injection) -> Value {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_value(body) {
        Ok(r) => r,
        Err(e) => {
            return to_value(AdmissionResponse::invalid(format!(
                "not an AdmissionReview: {e}"
            )));
        }
    };
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return to_value(AdmissionResponse::invalid(format!(
                "the AdmissionReview has no request: {e}"
            )));
        }
    };
    let resp = AdmissionResponse::from(&req);
    let pod: Option<Pod> = req
        .object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok())
        .and_then(|v| serde_json::from_value(v).ok());
    let resp = match pod {
        None => resp,
        Some(pod) => {
            let ops = patch(&pod, cfg);
            if ops.is_empty() {
                resp
            } else {
                match serde_json::from_value::<json_patch::Patch>(Value::Array(ops)) {
                    Ok(p) => match resp.clone().with_patch(p) {
                        Ok(r) => r,
                        Err(e) => resp.deny(format!("cannot encode the patch: {e}")),
                    },
                    Err(e) => resp.deny(format!("cannot build the patch: {e}")),
                }
            }
        }
    };
    to_value(resp)
}

/// The review as JSON, its patch base64-encoded: Go encodes `[]byte` so,
/// and so does every client of the API; kube-core leaves the bytes a
/// number array.
fn to_value(r: AdmissionResponse) -> Value {
    use base64::Engine;
    let mut v =
        serde_json::to_value(r.into_review()).unwrap_or_else(|e| json!({"error": e.to_string()}));
    if let Some(p) = v.pointer_mut("/response/patch")
        && let Some(bytes) = p.as_array()
    {
        let raw: Vec<u8> = bytes
            .iter()
            .filter_map(|b| b.as_u64())
            .map(|b| b as u8)
            .collect();
        *p = Value::String(base64::engine::general_purpose::STANDARD.encode(raw));
    }
    v
}

/// The webhook's routes: `POST /mutate`, `GET /healthz`.
pub fn router(cfg: Injection) -> Router {
    Router::new()
        .route(
            "/mutate",
            post(
                |State(cfg): State<Arc<Injection>>, Json(body): Json<Value>| async move {
                    Json(review(body, &cfg))
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(Arc::new(cfg))
}

/// A TLS server configuration from PEM files (a certificate chain, and
/// its key: what cert-manager writes as `tls.crt` and `tls.key`).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("the certificate and key: {e}"))?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// Serves the webhook over TLS on `listener` until the task is dropped; a
/// connection that fails its handshake is dropped alone.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: rustls::ServerConfig,
    cfg: Injection,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    serve_with(listener, move || acceptor.clone(), cfg).await
}

/// [`serve`] with the certificate and key read from files, and read again
/// when either file changes (cert-manager renews them in place): a renewal
/// that does not load keeps the old one, said each time the files change.
pub async fn serve_files(
    listener: tokio::net::TcpListener,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    cfg: Injection,
) -> std::io::Result<()> {
    // Both files: a renewal writes one, then the other.
    let modified = move |c: &std::path::Path, k: &std::path::Path| {
        let m = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (m(c), m(k))
    };
    let first = tls_config(&cert, &key).map_err(std::io::Error::other)?;
    let current = std::sync::Mutex::new((
        modified(&cert, &key),
        tokio_rustls::TlsAcceptor::from(Arc::new(first)),
    ));
    serve_with(
        listener,
        move || {
            let mut c = current.lock().unwrap_or_else(|e| e.into_inner());
            let now = modified(&cert, &key);
            if now != c.0 {
                c.0 = now;
                match tls_config(&cert, &key) {
                    Ok(t) => c.1 = tokio_rustls::TlsAcceptor::from(Arc::new(t)),
                    Err(e) => eprintln!("vagus webhook: kept the old certificate: {e}"),
                }
            }
            c.1.clone()
        },
        cfg,
    )
    .await
}

async fn serve_with(
    listener: tokio::net::TcpListener,
    acceptor: impl Fn() -> tokio_rustls::TlsAcceptor,
    cfg: Injection,
) -> std::io::Result<()> {
    let app = router(cfg);
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}
