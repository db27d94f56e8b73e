//! kube-scheduler's extender, answered by the decision core:
//! `POST /scheduler/filter`, `/scheduler/prioritize`, `/scheduler/bind`
//! and `/scheduler/preempt` (the wire types in `vagus_kube::extender`).
//!
//! Served on a listener of its own: kube-scheduler's extender client sends
//! no bearer token, so these routes take none, and the listener belongs
//! where only the scheduler reaches it (the manifests' NetworkPolicy).
//!
//! A pod that asks for no GPU is Kubernetes' business alone: every node
//! passes, none is preferred, and its bind is a plain Binding.

use super::Api;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use vagus_decision::Profile;
use vagus_decision::core::Fitness;
use vagus_decision::manifest::WORKLOAD_LABEL;
use vagus_kube::binder::Binder;
use vagus_kube::extender::{
    ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult,
    ExtenderPreemptionArgs, ExtenderPreemptionResult, FailedNodes, HostPriority, MetaVictims,
    NodeList, node_name, scale,
};
use vagus_kube::pod;

/// Who the audit trail says decided a bind.
const ACTOR: &str = "kube-scheduler";

/// The extender's state: the brain's API, and the API server when the
/// brain has one.
pub struct Extender {
    api: Arc<Api>,
    binder: Option<Binder>,
    /// Pods bound through this brain, UID → workload (a preemption's
    /// victims come by UID).
    bound: Mutex<HashMap<String, String>>,
    /// Whether this brain holds the lease (`None`: it acts alone).
    leading: Option<tokio::sync::watch::Receiver<bool>>,
    /// The Kubernetes executor's view of the placements' pods, where it
    /// runs: a victim's workload by its pod's UID, whoever bound it.
    pods: Option<kube::runtime::reflector::Store<Pod>>,
}

impl Extender {
    pub fn new(
        api: Arc<Api>,
        binder: Option<Binder>,
        leading: Option<tokio::sync::watch::Receiver<bool>>,
        pods: Option<kube::runtime::reflector::Store<Pod>>,
    ) -> Extender {
        Extender {
            api,
            binder,
            bound: Mutex::new(HashMap::new()),
            leading,
            pods,
        }
    }

    /// The workload of the pod with this UID, if it is a placement's.
    fn workload_of(&self, uid: &str) -> Option<String> {
        if let Some(w) = self.bound().get(uid) {
            return Some(w.clone());
        }
        self.pods.as_ref()?.state().iter().find_map(|p| {
            (p.metadata.uid.as_deref() == Some(uid))
                .then(|| p.metadata.labels.as_ref()?.get(WORKLOAD_LABEL).cloned())
                .flatten()
        })
    }

    fn bound(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The extender's routes.
pub fn router(x: Arc<Extender>) -> Router {
    Router::new()
        .route("/scheduler/filter", post(filter))
        .route("/scheduler/prioritize", post(prioritize))
        .route("/scheduler/bind", post(bind))
        .route("/scheduler/preempt", post(preempt))
        .with_state(x)
}

/// Serves the extender on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, x: Arc<Extender>) -> std::io::Result<()> {
    axum::serve(listener, router(x)).await
}

/// The body as `T`; a 400 with `bad(why)` when it is not one.
#[allow(clippy::result_large_err)] // the error is the answer, made once
fn parse<T: serde::de::DeserializeOwned, E: Serialize>(
    body: &[u8],
    what: &str,
    bad: impl FnOnce(String) -> E,
) -> Result<T, Response> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        let why = format!("not an {what}: {} (at {at})", e.into_inner());
        (StatusCode::BAD_REQUEST, axum::Json(bad(why))).into_response()
    })
}

/// The pod's workload, `None` when it asks for no GPU.
fn workload(pod: Option<&Pod>) -> Result<Option<Profile>, String> {
    let pod = pod.ok_or("Pod: required")?;
    if !pod::wants_gpu(pod) {
        return Ok(None);
    }
    pod::profile(pod).map(Some).map_err(|e| e.to_string())
}

/// The candidate nodes' names and what the core says of each (`None`
/// for every node when the pod asks for no GPU: not Vagus's to judge).
fn assess(
    x: &Extender,
    args: &ExtenderArgs,
) -> Result<(Vec<String>, Vec<Option<Fitness>>), String> {
    let names = args.names()?;
    let fits = match workload(args.pod.as_ref())? {
        None => vec![None; names.len()],
        Some(p) => {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let f = x
                .api
                .with_core(|c| c.assess(&p, &refs))
                .map_err(|e| e.to_string())?;
            f.into_iter().map(Some).collect()
        }
    };
    Ok((names, fits))
}

async fn filter(State(x): State<Arc<Extender>>, body: axum::body::Bytes) -> Response {
    let args: ExtenderArgs = match parse(&body, "ExtenderArgs", ExtenderFilterResult::error) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (names, fits) = match assess(&x, &args) {
        Ok(a) => a,
        Err(e) => return ok(ExtenderFilterResult::error(e)),
    };
    let (mut passed, mut failed, mut lasting) =
        (Vec::new(), FailedNodes::new(), FailedNodes::new());
    for (name, fit) in names.iter().zip(fits) {
        match fit {
            None | Some(Fitness::Fits { .. }) => passed.push(name.clone()),
            Some(Fitness::Unfit { why, lasting: true }) => {
                lasting.insert(name.clone(), why);
            }
            Some(Fitness::Unfit { why, .. }) => {
                failed.insert(name.clone(), why);
            }
        }
    }
    let mut r = ExtenderFilterResult {
        failed_nodes: Some(failed),
        failed_and_unresolvable_nodes: Some(lasting),
        ..Default::default()
    };
    if args.cache_capable() {
        r.node_names = Some(passed);
    } else {
        let items = args
            .nodes
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| node_name(n).is_some_and(|m| passed.iter().any(|p| p == m)))
            .collect();
        r.nodes = Some(NodeList {
            items,
            ..Default::default()
        });
    }
    ok(r)
}

async fn prioritize(State(x): State<Arc<Extender>>, body: axum::body::Bytes) -> Response {
    let args: ExtenderArgs = match parse(&body, "ExtenderArgs", |e| e) {
        Ok(a) => a,
        Err(r) => return r,
    };
    // Go's client reads a HostPriorityList: an error is an HTTP status.
    let fail = |e: String| (StatusCode::BAD_REQUEST, e).into_response();
    let (names, fits) = match assess(&x, &args) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let scores: Vec<Option<f64>> = fits
        .into_iter()
        .map(|f| match f {
            Some(Fitness::Fits { score, .. }) => Some(score),
            _ => None,
        })
        .collect();
    let fitting: Vec<f64> = scores.iter().flatten().copied().collect();
    let mut scaled = scale(&fitting).into_iter();
    let list: Vec<HostPriority> = names
        .into_iter()
        .zip(scores)
        .map(|(host, s)| HostPriority {
            host,
            score: s.and_then(|_| scaled.next()).unwrap_or(0),
        })
        .collect();
    ok(list)
}

async fn bind(State(x): State<Arc<Extender>>, body: axum::body::Bytes) -> Response {
    let error = |e: String| ExtenderBindingResult { error: e };
    let args: ExtenderBindingArgs = match parse(&body, "ExtenderBindingArgs", error) {
        Ok(a) => a,
        Err(r) => return r,
    };
    ok(match bind_pod(&x, &args).await {
        Ok(()) => ExtenderBindingResult::default(),
        Err(e) => error(e),
    })
}

/// Places the pod on the node kube-scheduler chose (audited), annotates
/// it with its GPUs and share, and binds it; a bind the API server refuses
/// takes the placement back.
async fn bind_pod(x: &Extender, a: &ExtenderBindingArgs) -> Result<(), String> {
    let binder = x
        .binder
        .as_ref()
        .ok_or("this brain has no Kubernetes client to bind with (start it with --kubernetes)")?;
    if x.leading.as_ref().is_some_and(|l| !*l.borrow()) {
        return Err("this brain does not hold the lease: its leader binds".into());
    }
    let pod = binder
        .pod(&a.pod_namespace, &a.pod_name, &a.pod_uid)
        .await
        .map_err(|e| e.to_string())?;
    let Some(p) = workload(Some(&pod))? else {
        let none = BTreeMap::new();
        return binder
            .bind(
                &a.pod_namespace,
                &a.pod_name,
                &a.pod_uid,
                &a.node,
                &none,
                &none,
            )
            .await
            .map_err(|e| e.to_string());
    };
    let id = p.name.clone();
    let placed = match x
        .api
        .decide(ACTOR, None, Some(&id), |c, now| {
            c.place_on(p, &a.node, ACTOR, now)
        })
        .await
    {
        Ok(_) => true,
        Err(e) => {
            // Bound before (an answer lost on the way back): the same node
            // binds again, another is refused.
            let again = x
                .api
                .with_core(|c| c.placement(&id).is_some_and(|p| p.node == a.node));
            if !again {
                return Err(e.message().to_string());
            }
            false
        }
    };
    let Some((gpus, share)) = x
        .api
        .with_core(|c| c.placement(&id).map(|p| (p.gpus.clone(), p.share_pct)))
    else {
        return Err(format!("{id}: placed, then gone before its bind"));
    };
    let notes = pod::placed_annotations(&id, &gpus, share);
    let labels = BTreeMap::from([(WORKLOAD_LABEL.to_string(), id.clone())]);
    match binder
        .bind(
            &a.pod_namespace,
            &a.pod_name,
            &a.pod_uid,
            &a.node,
            &labels,
            &notes,
        )
        .await
    {
        Ok(()) => {
            // Pods whose placements are gone are forgotten here.
            let live: std::collections::HashSet<String> = x
                .api
                .with_core(|c| c.placements().map(|p| p.id.clone()).collect());
            let mut bound = x.bound();
            bound.retain(|_, w| live.contains(w));
            bound.insert(a.pod_uid.clone(), id);
            Ok(())
        }
        Err(e) => {
            if placed {
                let _ = x.api.remove(ACTOR, &id).await;
            }
            Err(e.to_string())
        }
    }
}

async fn preempt(State(x): State<Arc<Extender>>, body: axum::body::Bytes) -> Response {
    let args: ExtenderPreemptionArgs = match parse(&body, "ExtenderPreemptionArgs", |e| e) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let fail = |e: String| (StatusCode::BAD_REQUEST, e).into_response();
    let victims = args.victims();
    let Some(p) = (match workload(args.pod.as_ref()) {
        Ok(p) => p,
        Err(e) => return fail(e),
    }) else {
        // Not Vagus's pod: the scheduler's choice stands.
        return ok(ExtenderPreemptionResult {
            node_name_to_meta_victims: Some(victims),
        });
    };
    // The victims' workloads: from the pods themselves where the scheduler
    // sent them, else by UID (the pods this brain bound, or its reflector's).
    let names = |node: &str, v: &MetaVictims| -> Vec<String> {
        match args.node_name_to_victims.as_ref().and_then(|m| m.get(node)) {
            Some(whole) => whole
                .pods
                .iter()
                .filter_map(|p| {
                    let m = &p.metadata;
                    Some(pod::workload_name(
                        m.namespace.as_deref()?,
                        m.name.as_deref()?,
                    ))
                })
                .collect(),
            None => v
                .pods
                .iter()
                .filter_map(|m| x.workload_of(&m.uid))
                .collect(),
        }
    };
    let kept = victims
        .iter()
        .filter(|(node, v)| {
            let names = names(node, v);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            x.api
                .with_core(|c| c.may_preempt(p.priority, &refs))
                .is_ok()
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    ok(ExtenderPreemptionResult {
        node_name_to_meta_victims: Some(kept),
    })
}

fn ok<T: Serialize>(v: T) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}
