//! The Kubernetes executor: where the brain runs on Kubernetes, the
//! placements it decides become Pods (its manifest, bound by `nodeName`),
//! removed and moved ones are deleted with a grace period (their routes
//! went first), and what happens behind its back is reconciled — a pod
//! kube-scheduler bound that is deleted ends its placement, a pod of its
//! own that is deleted is made again, and so is a replica's Service, a node
//! Kubernetes reports not ready (or deletes) is down for the failover.
//! Reflectors (kube-runtime) keep its view of pods, Services and nodes;
//! only the lease's holder acts.
//!
//! Placements with a launch spec stay the agents' (`crate::replicas`).

use crate::http::Api;
use futures_util::FutureExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::runtime::reflector::Store;
use std::collections::{BTreeMap, HashSet};
use tokio::sync::watch;
use vagus_kube::executor::{
    Applier, Backend, PodSeen, Step, Wanted, http_route, not_ready, placeholder, plan, route_name,
    service,
};

/// Who the audit trail says decided what the executor reconciles.
pub const ACTOR: &str = "kubernetes";

/// How long a placement kube-scheduler bound may go without its pod in
/// view before the pod counts as gone (the reflector catching up).
const BOUND_SEEN_WITHIN_MS: u64 = 60_000;

/// What the executor sees of the cluster: its reflectors' stores.
#[derive(Clone)]
pub struct View {
    /// Pods with a placement's label.
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    /// Services with a placement's label.
    pub services: Store<Service>,
}

pub struct KubeExecutor {
    applier: Applier,
    pods: Store<Pod>,
    nodes: Store<Node>,
    services: Store<Service>,
    leading: watch::Receiver<bool>,
    /// Placements kube-scheduler bound whose pod has been seen.
    seen: HashSet<String>,
    /// Each model's route as last applied (its HTTPRoute's backends).
    routes: BTreeMap<String, Vec<Backend>>,
}

impl KubeExecutor {
    pub fn new(applier: Applier, view: View, leading: watch::Receiver<bool>) -> KubeExecutor {
        KubeExecutor {
            applier,
            pods: view.pods,
            nodes: view.nodes,
            services: view.services,
            leading,
            seen: HashSet::new(),
            routes: BTreeMap::new(),
        }
    }

    /// The reflectors for `client`: pods and Services with a placement's
    /// label, and nodes; their stores, and the tasks that keep them.
    pub fn reflect(client: &kube::Client) -> (View, Vec<tokio::task::JoinHandle<()>>) {
        use futures_util::StreamExt;
        use kube::runtime::{WatchStreamExt, reflector, watcher};
        let (pods, pw) = reflector::store::<Pod>();
        let (nodes, nw) = reflector::store::<Node>();
        let (services, sw) = reflector::store::<Service>();
        let labelled = watcher::Config::default().labels(vagus_decision::manifest::WORKLOAD_LABEL);
        let pod_api: kube::Api<Pod> = kube::Api::all(client.clone());
        let node_api: kube::Api<Node> = kube::Api::all(client.clone());
        let service_api: kube::Api<Service> = kube::Api::all(client.clone());
        let p = reflector(pw, watcher(pod_api, labelled.clone()).default_backoff())
            .for_each(|_| async {});
        let n = reflector(
            nw,
            watcher(node_api, watcher::Config::default()).default_backoff(),
        )
        .for_each(|_| async {});
        let v =
            reflector(sw, watcher(service_api, labelled).default_backoff()).for_each(|_| async {});
        let view = View {
            pods,
            nodes,
            services,
        };
        (
            view,
            vec![tokio::spawn(p), tokio::spawn(n), tokio::spawn(v)],
        )
    }

    /// One round; what it did, in words (nothing while it does not lead or
    /// its view is not complete yet).
    pub async fn round(&mut self, api: &Api) -> Vec<String> {
        if !*self.leading.borrow() {
            return Vec::new();
        }
        let listed = [
            self.pods.wait_until_ready().now_or_never(),
            self.nodes.wait_until_ready().now_or_never(),
            self.services.wait_until_ready().now_or_never(),
        ];
        if listed.iter().any(Option::is_none) {
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
        let m = api.with_core(|c| c.config().manifest.clone());
        let (wanted, bound, models) = api.with_core(|c| {
            let down_nodes: HashSet<&str> = c
                .nodes()
                .iter()
                .filter(|n| n.down.is_some())
                .map(|n| n.name.as_str())
                .collect();
            let mut wanted = Vec::new();
            let mut bound = BTreeMap::new();
            // Each model's replicas of the brain's, with their weights.
            let mut models: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
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
                    let weight = p.weight.unwrap_or(crate::http::DEFAULT_WEIGHT);
                    models
                        .entry(p.profile.model_id.clone())
                        .or_default()
                        .push((p.id.clone(), weight));
                }
            }
            // Queued workloads that asked for a node: its placeholder.
            for q in c.queued() {
                let Some(shape) = c.scale_out_shape(q) else {
                    continue;
                };
                wanted.push(Wanted {
                    workload: q.id.clone(),
                    pod: placeholder(
                        &q.id,
                        &c.config().manifest.namespace,
                        &shape.gpu_model,
                        q.profile.gpus().max(1),
                        q.profile.cpu_milli,
                        q.profile.memory_mib,
                    ),
                });
            }
            // In name order: the route's backends stay put between rounds.
            for r in models.values_mut() {
                r.sort();
            }
            (wanted, bound, models)
        });
        // Routes first: a replica stops taking requests before its pod is
        // deleted (the drain), and a new one takes none until ready.
        if let Some(gateway) = &m.gateway {
            did.extend(
                self.route(&models, &seen, &m.namespace, gateway, m.port)
                    .await,
            );
        }
        // Only placements still bound are remembered.
        self.seen.retain(|w| bound.contains_key(w));
        let steps = plan(&wanted, &bound, &seen);
        // Pods this round deletes (their replica's Service is looked at
        // again once its new pod is there).
        let deleted: HashSet<(String, String)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Delete { namespace, name } => Some((namespace.clone(), name.clone())),
                _ => None,
            })
            .collect();
        for step in steps {
            let r = match &step {
                Step::Create(pod) => {
                    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                    let name = pod.metadata.name.as_deref().unwrap_or_default();
                    match self.applier.create(pod).await {
                        Ok(()) => self
                            .applier
                            .create_service(&service(name, ns, m.port))
                            .await
                            .map(|()| format!("created pod {ns}/{name}")),
                        Err(e) => Err(e),
                    }
                }
                Step::Delete { namespace, name } => {
                    match self.applier.delete(namespace, name).await {
                        // Its Service goes once no placement of that name is
                        // left (a moved one keeps it).
                        Ok(()) if !wanted.iter().any(|w| &w.workload == name) => self
                            .applier
                            .delete_service(namespace, name)
                            .await
                            .map(|()| format!("deleted pod {namespace}/{name}")),
                        Ok(()) => Ok(format!("deleted pod {namespace}/{name}")),
                        Err(e) => Err(e),
                    }
                }
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
        // A replica whose pod is there but whose Service is not (deleted
        // behind the brain's back): its Service again.
        let services: HashSet<(String, String)> = self
            .services
            .state()
            .iter()
            .filter_map(|s| Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?)))
            .collect();
        let replicas: HashSet<&str> = models
            .values()
            .flatten()
            .map(|(id, _)| id.as_str())
            .collect();
        for p in seen.iter().filter(|p| p.owned && !p.deleting) {
            let at = (p.namespace.clone(), p.name.clone());
            // A replica's own pod (not a placeholder, which has no Service).
            let replica = replicas.contains(p.workload.as_str())
                && wanted.iter().any(|w| {
                    w.workload == p.workload && w.pod.metadata.name.as_deref() == Some(&p.name)
                });
            if !replica || services.contains(&at) || deleted.contains(&at) {
                continue;
            }
            match self
                .applier
                .create_service(&service(&p.name, &p.namespace, m.port))
                .await
            {
                Ok(()) => did.push(format!(
                    "created service {}/{}: it was gone",
                    p.namespace, p.name
                )),
                Err(e) => {
                    eprintln!("vagus brain: the Kubernetes executor: {e}");
                    did.push(format!("failed: {e}"));
                }
            }
        }
        did
    }

    /// Each model's HTTPRoute: its replicas' Services with the brain's
    /// weights, 0 for a pod not ready; applied when they change, deleted
    /// when the model has no replica left.
    async fn route(
        &mut self,
        models: &BTreeMap<String, Vec<(String, u32)>>,
        seen: &[PodSeen],
        namespace: &str,
        gateway: &str,
        port: u16,
    ) -> Vec<String> {
        let mut did = Vec::new();
        for (model, replicas) in models {
            let backends: Vec<Backend> = replicas
                .iter()
                .map(|(id, weight)| {
                    let ready = seen
                        .iter()
                        .any(|s| s.owned && &s.workload == id && s.ready && !s.deleting);
                    Backend {
                        service: id.clone(),
                        weight: if ready { *weight } else { 0 },
                    }
                })
                .collect();
            if self.routes.get(model) == Some(&backends) {
                continue;
            }
            let route = http_route(model, namespace, gateway, port, &backends);
            match self.applier.apply_route(namespace, &route).await {
                Ok(()) => {
                    let weights: Vec<String> = backends
                        .iter()
                        .map(|b| format!("{}={}", b.service, b.weight))
                        .collect();
                    did.push(format!(
                        "routed {}: {}",
                        route_name(model),
                        weights.join(" ")
                    ));
                    self.routes.insert(model.clone(), backends);
                }
                Err(e) => did.push(format!("failed: {e}")),
            }
        }
        let gone: Vec<String> = self
            .routes
            .keys()
            .filter(|m| !models.contains_key(*m))
            .cloned()
            .collect();
        for model in gone {
            match self
                .applier
                .delete_route(namespace, &route_name(&model))
                .await
            {
                Ok(()) => {
                    did.push(format!("deleted HTTPRoute {}", route_name(&model)));
                    self.routes.remove(&model);
                }
                Err(e) => did.push(format!("failed: {e}")),
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
