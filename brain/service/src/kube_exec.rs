//! The Kubernetes executor: where the brain runs on Kubernetes, the
//! placements it decides become Pods (its manifest, bound by `nodeName`),
//! removed and moved ones are deleted with a grace period (their routes
//! went first), and what happens behind its back is reconciled — a pod
//! kube-scheduler bound that is deleted ends its placement, a pod of its
//! own that is deleted is made again, a node Kubernetes reports not ready
//! (or deletes) is down for the failover. Reflectors (kube-runtime) keep
//! its view of pods and nodes; only the lease's holder acts.
//!
//! Placements with a launch spec stay the agents' (`crate::replicas`).

use crate::http::Api;
use futures_util::FutureExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::Store;
use std::collections::{BTreeMap, HashSet};
use tokio::sync::watch;
use vagus_kube::executor::{Applier, PodSeen, Step, Wanted, not_ready, plan};

/// Who the audit trail says decided what the executor reconciles.
pub const ACTOR: &str = "kubernetes";

/// How long a placement kube-scheduler bound may go without its pod in
/// view before the pod counts as gone (the reflector catching up).
const BOUND_SEEN_WITHIN_MS: u64 = 60_000;

pub struct KubeExecutor {
    applier: Applier,
    pods: Store<Pod>,
    nodes: Store<Node>,
    leading: watch::Receiver<bool>,
    /// Placements kube-scheduler bound whose pod has been seen.
    seen: HashSet<String>,
}

impl KubeExecutor {
    pub fn new(
        applier: Applier,
        pods: Store<Pod>,
        nodes: Store<Node>,
        leading: watch::Receiver<bool>,
    ) -> KubeExecutor {
        KubeExecutor {
            applier,
            pods,
            nodes,
            leading,
            seen: HashSet::new(),
        }
    }

    /// The reflectors for `client`: pods with a placement's label, and
    /// nodes; their stores, and the tasks that keep them.
    pub fn reflect(
        client: &kube::Client,
    ) -> (Store<Pod>, Store<Node>, Vec<tokio::task::JoinHandle<()>>) {
        use futures_util::StreamExt;
        use kube::runtime::{WatchStreamExt, reflector, watcher};
        let (pods, pw) = reflector::store::<Pod>();
        let (nodes, nw) = reflector::store::<Node>();
        let labelled = watcher::Config::default().labels(vagus_decision::manifest::WORKLOAD_LABEL);
        let pod_api: kube::Api<Pod> = kube::Api::all(client.clone());
        let node_api: kube::Api<Node> = kube::Api::all(client.clone());
        let p = reflector(pw, watcher(pod_api, labelled).default_backoff()).for_each(|_| async {});
        let n = reflector(
            nw,
            watcher(node_api, watcher::Config::default()).default_backoff(),
        )
        .for_each(|_| async {});
        (pods, nodes, vec![tokio::spawn(p), tokio::spawn(n)])
    }

    /// One round; what it did, in words (nothing while it does not lead or
    /// its view is not complete yet).
    pub async fn round(&mut self, api: &Api) -> Vec<String> {
        if !*self.leading.borrow() {
            return Vec::new();
        }
        let pods_ready = self.pods.wait_until_ready().now_or_never().is_some();
        let nodes_ready = self.nodes.wait_until_ready().now_or_never().is_some();
        if !pods_ready || !nodes_ready {
            return Vec::new();
        }
        let mut did = Vec::new();
        let down: BTreeMap<String, String> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, not_ready(n)?)))
            .collect();
        api.set_kube_down(down.clone());
        // The core's nodes Kubernetes took down or brought back (an agent's
        // failover reads the same verdicts, so neither undoes the other).
        let nodes: Vec<(String, Option<String>)> = api.with_core(|c| {
            c.nodes()
                .iter()
                .map(|n| (n.name.clone(), n.down.clone()))
                .collect()
        });
        for (node, was) in nodes {
            match (down.get(&node), was) {
                (Some(why), None) => match api.node_down(ACTOR, &node, why).await {
                    Ok(moved) => {
                        let summary = format!("{node} is down: {why}; {} moved", moved.len());
                        api.alert("node_down", Some(&node), moved, summary.clone())
                            .await;
                        did.push(summary);
                    }
                    Err(e) => did.push(format!("failed: {node} down: {}", e.message())),
                },
                (None, Some(was)) if was.starts_with("Kubernetes") => {
                    match api.node_up(ACTOR, &node).await {
                        Ok(placed) => {
                            let summary = format!("{node} is ready again; {} placed", placed.len());
                            api.alert("node_up", Some(&node), placed, summary.clone())
                                .await;
                            did.push(summary);
                        }
                        Err(e) => did.push(format!("failed: {node} up: {}", e.message())),
                    }
                }
                _ => {}
            }
        }
        let seen: Vec<PodSeen> = self
            .pods
            .state()
            .iter()
            .filter_map(|p| PodSeen::of(p))
            .collect();
        for s in seen.iter().filter(|s| !s.owned && !s.deleting) {
            self.seen.insert(s.workload.clone());
        }
        let now = api.now();
        let (wanted, bound) = api.with_core(|c| {
            let down_nodes: HashSet<&str> = c
                .nodes()
                .iter()
                .filter(|n| n.down.is_some())
                .map(|n| n.name.as_str())
                .collect();
            let mut wanted = Vec::new();
            let mut bound = BTreeMap::new();
            for p in c.placements() {
                if p.bound_by.is_some() {
                    let expected = self.seen.contains(&p.id)
                        || now.saturating_sub(p.at_ms) > BOUND_SEEN_WITHIN_MS;
                    bound.insert(p.id.clone(), expected);
                } else if p.profile.launch.is_none() && !down_nodes.contains(p.node.as_str()) {
                    wanted.push(Wanted {
                        workload: p.id.clone(),
                        pod: c.manifest(p),
                    });
                }
            }
            (wanted, bound)
        });
        for step in plan(&wanted, &bound, &seen) {
            let r = match &step {
                Step::Create(pod) => self.applier.create(pod).await.map(|()| {
                    format!(
                        "created pod {}/{}",
                        pod.metadata.namespace.as_deref().unwrap_or("default"),
                        pod.metadata.name.as_deref().unwrap_or_default()
                    )
                }),
                Step::Delete { namespace, name } => self
                    .applier
                    .delete(namespace, name)
                    .await
                    .map(|()| format!("deleted pod {namespace}/{name}")),
                Step::Gone { workload } => {
                    self.seen.remove(workload);
                    api.remove(ACTOR, workload)
                        .await
                        .map(|()| format!("removed {workload}: its pod is gone"))
                        .map_err(|e| format!("removing {workload}: {}", e.message()))
                }
            };
            match r {
                Ok(s) => did.push(s),
                Err(e) => {
                    eprintln!("vagus brain: the Kubernetes executor: {e}");
                    did.push(format!("failed: {e}"));
                }
            }
        }
        did
    }

    /// Rounds every `every` until the task is dropped.
    pub async fn run(mut self, api: std::sync::Arc<Api>, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            self.round(&api).await;
        }
    }
}
