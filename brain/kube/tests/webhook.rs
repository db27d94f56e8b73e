//! The admission webhook against AdmissionReviews shaped as the API server
//! sends them (admission.k8s.io/v1): the JSON patch it answers, applied to
//! the pod, gives the pod Vagus needs; and the same over real HTTPS.

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use vagus_kube::webhook::{self, Injection};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The answer's patch applied to the review's pod (unchanged when none).
fn patched(review: &Value, answer: &Value) -> Pod {
    let resp = &answer["response"];
    assert_eq!(resp["uid"], review["request"]["uid"], "{answer}");
    assert_eq!(resp["allowed"], true, "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    let mut pod = review["request"]["object"].clone();
    if let Some(p) = resp["patch"].as_str() {
        assert_eq!(resp["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        let ops: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut pod, &ops).unwrap();
    } else {
        assert!(resp.get("patchType").is_none_or(Value::is_null), "{answer}");
    }
    serde_json::from_value(pod).unwrap()
}

fn env<'a>(
    pod: &'a Pod,
    container: usize,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::EnvVar> {
    pod.spec.as_ref().unwrap().containers[container]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
}

#[test]
fn a_gpu_pod_goes_to_vagus_with_the_shim() {
    let review = fixture("admission-gpu-pod.json");
    let cfg = Injection::default();
    let pod = patched(&review, &webhook::review(review.clone(), &cfg));
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.scheduler_name.as_deref(), Some("vagus-scheduler"));
    assert_eq!(spec.host_ipc, Some(true));
    // Its own LD_PRELOAD kept, after the shim; the rest of its env kept.
    assert_eq!(
        env(&pod, 0, "LD_PRELOAD").unwrap().value.as_deref(),
        Some("/opt/vagus/lib/libvagus_shim.so /usr/lib/libtcmalloc.so")
    );
    assert_eq!(
        env(&pod, 0, "HF_HOME").unwrap().value.as_deref(),
        Some("/cache")
    );
    assert_eq!(
        env(&pod, 0, "VAGUS_SHM_DIR").unwrap().value.as_deref(),
        Some("/run/vagus")
    );
    assert_eq!(
        env(&pod, 0, "CUDA_MPS_PIPE_DIRECTORY")
            .unwrap()
            .value
            .as_deref(),
        Some("/tmp/nvidia-mps")
    );
    let share = env(&pod, 0, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE").unwrap();
    assert_eq!(
        share
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.annotations['vagus.dev/share-pct']"
    );
    // The sidecar that asks for no GPU is left alone.
    assert!(env(&pod, 1, "LD_PRELOAD").is_none());
    assert!(spec.containers[1].volume_mounts.is_none());
    // The existing volume and mount stay; the three hostPaths are added.
    let volumes: Vec<(&str, Option<&str>)> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| {
            (
                v.name.as_str(),
                v.host_path.as_ref().map(|h| h.path.as_str()),
            )
        })
        .collect();
    assert_eq!(
        volumes,
        [
            ("kube-api-access-abcde", None),
            ("vagus-shim", Some("/var/lib/vagus/lib")),
            ("vagus-segments", Some("/run/vagus")),
            ("vagus-mps-pipe", Some("/tmp/nvidia-mps")),
        ]
    );
    let mounts: Vec<(&str, bool)> = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.as_str(), m.read_only == Some(true)))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/var/run/secrets/kubernetes.io/serviceaccount", true),
            ("/opt/vagus/lib", true),
            ("/run/vagus", false),
            ("/tmp/nvidia-mps", false),
        ]
    );
    // Admitting the patched pod again changes nothing more.
    let mut again = review.clone();
    again["request"]["object"] = serde_json::to_value(&pod).unwrap();
    assert!(webhook::review(again, &cfg)["response"]["patch"].is_null());
}

#[test]
fn an_ld_preload_from_a_reference_is_kept_after_the_shim() {
    let mut review = fixture("admission-gpu-pod.json");
    let env0 = review
        .pointer_mut("/request/object/spec/containers/0/env")
        .unwrap()
        .as_array_mut()
        .unwrap();
    let k = env0.iter().position(|e| e["name"] == "LD_PRELOAD").unwrap();
    env0[k] = serde_json::json!({"name": "LD_PRELOAD", "valueFrom":
        {"configMapKeyRef": {"name": "tuning", "key": "preload"}}});
    let cfg = Injection::default();
    let pod = patched(&review, &webhook::review(review.clone(), &cfg));
    let names: Vec<&str> = pod.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    // The reference moved to a variable defined before LD_PRELOAD, which
    // names it the way the kubelet expands: `$(VAR)`.
    let from = names.iter().position(|n| *n == webhook::PRELOAD_FROM);
    let preload = names.iter().position(|n| *n == "LD_PRELOAD");
    assert!(
        matches!((from, preload), (Some(f), Some(p)) if f < p),
        "{names:?}"
    );
    let moved = env(&pod, 0, webhook::PRELOAD_FROM).unwrap();
    let cm = moved
        .value_from
        .as_ref()
        .and_then(|v| v.config_map_key_ref.as_ref())
        .unwrap();
    assert_eq!((cm.name.as_str(), cm.key.as_str()), ("tuning", "preload"));
    assert_eq!(
        env(&pod, 0, "LD_PRELOAD").unwrap().value.as_deref(),
        Some("/opt/vagus/lib/libvagus_shim.so $(VAGUS_PRELOAD_FROM)")
    );
    assert!(env(&pod, 0, "LD_PRELOAD").unwrap().value_from.is_none());
    // The rest as for any GPU pod; and once changed, left as it is.
    assert_eq!(
        env(&pod, 0, "HF_HOME").unwrap().value.as_deref(),
        Some("/cache")
    );
    let mut again = review.clone();
    again["request"]["object"] = serde_json::to_value(&pod).unwrap();
    let twice = patched(&again, &webhook::review(again.clone(), &cfg));
    assert_eq!(twice, pod);
}

#[test]
fn other_pods_pass_unchanged() {
    let cfg = Injection::default();
    for name in ["admission-cpu-pod.json", "admission-opted-out-pod.json"] {
        let review = fixture(name);
        let answer = webhook::review(review.clone(), &cfg);
        assert!(answer["response"]["patch"].is_null(), "{name}: {answer}");
        let pod = patched(&review, &answer);
        assert_eq!(
            pod.spec.unwrap().scheduler_name.as_deref(),
            Some("default-scheduler"),
            "{name}"
        );
    }
}

#[test]
fn a_review_that_is_not_one_is_answered_with_an_error() {
    let answer = webhook::review(serde_json::json!({"kind": "Pod"}), &Injection::default());
    let resp = &answer["response"];
    assert_eq!(resp["allowed"], false, "{answer}");
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("AdmissionReview"),
        "{answer}"
    );
}

/// The webhook over HTTPS with a certificate `vagus certs`' CA issued,
/// asked by curl as the API server would ask it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_over_https() {
    let dir = tempdir();
    let ca = vagus_link::certs::Ca::new("Vagus CA").unwrap();
    let issued = ca.issue("localhost").unwrap();
    let (cert, key, ca_file) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let tls = webhook::tls_config(&cert, &key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(webhook::serve(listener, tls, Injection::default()));
    let review = fixture("admission-gpu-pod.json");
    let body = dir.join("review.json");
    std::fs::write(&body, review.to_string()).unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&ca_file)
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("https://localhost:{port}/mutate"))
        .output()
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pod = patched(&review, &answer);
    assert_eq!(
        pod.spec.unwrap().scheduler_name.as_deref(),
        Some("vagus-scheduler")
    );
    // Plain HTTP is refused; the server goes on.
    let plain = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://localhost:{port}/healthz"))
        .output()
        .await
        .unwrap();
    assert!(!plain.status.success());
    let health = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&ca_file)
        .arg(format!("https://localhost:{port}/healthz"))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok\n");
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

async fn curl_health(port: u16, ca: &std::path::Path) -> bool {
    tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(format!("https://localhost:{port}/healthz"))
        .output()
        .await
        .unwrap()
        .status
        .success()
}

/// A renewed certificate (cert-manager writes it in place) is served from
/// the next connection; a renewal that does not load keeps the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_taken_up() {
    let dir = tempdir();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let write = |ca: &vagus_link::certs::Ca, name: &str| {
        let issued = ca.issue("localhost").unwrap();
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        let ca_file = dir.join(name);
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        ca_file
    };
    let old = write(
        &vagus_link::certs::Ca::new("Vagus CA").unwrap(),
        "old-ca.crt",
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(webhook::serve_files(
        listener,
        cert.clone(),
        key.clone(),
        Injection::default(),
    ));
    assert!(curl_health(port, &old).await);
    // Renewed by another CA: the next connection shows the new one.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let new = write(
        &vagus_link::certs::Ca::new("Vagus CA").unwrap(),
        "new-ca.crt",
    );
    assert!(
        curl_health(port, &new).await,
        "the renewed certificate is served"
    );
    assert!(!curl_health(port, &old).await, "the old one is not");
    // A broken renewal: the last good certificate stays.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(curl_health(port, &new).await);
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_certificate_files_are_named() {
    let dir = tempdir();
    let cert = dir.join("tls.crt");
    std::fs::write(&cert, "not a certificate").unwrap();
    let e = webhook::tls_config(&cert, &dir.join("tls.key")).unwrap_err();
    assert!(e.contains("tls.crt"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vagus-webhook-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
