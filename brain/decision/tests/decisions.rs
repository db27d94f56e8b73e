//! The decision core's behaviour: classification, each path, each
//! constraint (a case it rejects and one it accepts), preemption, a small
//! cluster whose best placement is known, explanations and manifests.

use vagus_decision::config::Config;
use vagus_decision::{
    Control, Core, GpuSpec, NodeLoad, NodeSpec, Path, Priority, Profile, Refusal, Shape,
};

fn gpu(model: &str) -> GpuSpec {
    GpuSpec {
        model: model.into(),
        sms: None,
        memory_gb: None,
        tdp_w: None,
        throttling: false,
    }
}

fn node(name: &str, model: &str, gpus: usize) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        cpu_milli: 64_000,
        memory_mib: 512 * 1024,
        labels: Default::default(),
        gpus: (0..gpus).map(|_| gpu(model)).collect(),
    }
}

/// A small workload: score 2·10 + 8·512/100 = 60.96 → small (20%).
fn small(name: &str) -> Profile {
    Profile {
        name: name.into(),
        model_id: format!("model-{name}"),
        model_size_gb: 2.0,
        batch: 8,
        seq_len: 512,
        priority: Priority::P2,
        sla_ms: Some(200),
        tenant: "t1".into(),
        expected_duration_s: 3600,
        locality: vec![],
        accepted_models: vec![],
        cpu_milli: 1000,
        memory_mib: 4096,
        gpus: None,
        share_pct: None,
        gpu_memory_gb: None,
        max_cost_per_hour: None,
        preemptible: None,
        image: None,
        launch: None,
    }
}

fn with_share(mut p: Profile, share: u32) -> Profile {
    p.share_pct = Some(share);
    p
}

fn core(nodes: &[NodeSpec]) -> Core {
    core_with(Config::default(), nodes)
}

fn core_with(cfg: Config, nodes: &[NodeSpec]) -> Core {
    let mut c = Core::new(cfg).unwrap();
    for n in nodes {
        c.upsert_node(n).unwrap();
    }
    c
}

fn place(c: &mut Core, p: Profile) -> vagus_decision::Decision {
    c.place(p, 1_000).unwrap().remove(0)
}

#[test]
fn classification_table() {
    let cfg = Config::default();
    let mut p = small("a");
    // (model GB, batch, seq) → (class, share, preferred)
    let cases = [
        (2.0, 8, 512, "small", 20, Some("A100")),     // 60.96
        (9.9, 1, 1, "small", 20, Some("A100")),       // 99.01
        (10.0, 1, 0, "medium", 40, None),             // 100 (seq 0 only here)
        (7.0, 32, 1024, "medium", 40, None),          // 70 + 327.68
        (49.0, 1, 1000, "large", 100, Some("H100")),  // 500
        (70.0, 64, 4096, "large", 100, Some("H100")), // 700 + 2621
    ];
    for (gb, batch, seq, name, share, pref) in cases {
        p.model_size_gb = gb;
        p.batch = batch;
        p.seq_len = seq;
        let c = cfg.classes.classify(&p);
        assert_eq!(
            (c.name.as_str(), c.share_pct, c.preferred_model.as_deref()),
            (name, share, pref),
            "{gb} GB, batch {batch}, seq {seq}: score {}",
            c.compute_score
        );
    }
    // An exact share rounds up to the grid: 30 → 40, 81 → 100.
    assert_eq!(
        cfg.classes.classify(&with_share(small("a"), 30)).share_pct,
        40
    );
    assert_eq!(
        cfg.classes.classify(&with_share(small("a"), 81)).share_pct,
        100
    );
    // Without a grid, shares are exact (the trace replay's).
    let mut exact = cfg.classes.clone();
    exact.grid.clear();
    assert_eq!(exact.classify(&with_share(small("a"), 30)).share_pct, 30);
}

#[test]
fn direct_fills_an_existing_pool_before_an_idle_gpu() {
    let mut c = core(&[node("n1", "NVIDIA A100-SXM4-80GB", 2)]);
    let a = place(&mut c, small("a"));
    assert_eq!(a.path, Path::Direct, "{}", a.summary);
    let b = place(&mut c, small("b"));
    assert_eq!(b.path, Path::Direct);
    assert_eq!(
        b.gpus, a.gpus,
        "the second 20% workload joins the first's pool"
    );
    let g = &c.node("n1").unwrap().gpus[a.gpus[0] as usize];
    assert_eq!((g.pool, g.used_pct), (Some(20), 40));
    // Explanations: candidates with their score breakdown summing to the score.
    let top = &b.top[0];
    let w = &top.weighted;
    let sum =
        w.efficiency + w.affinity + w.headroom + w.power + w.mps + w.locality + w.fragmentation;
    assert!((sum - top.score).abs() < 1e-9, "{sum} vs {}", top.score);
    assert_eq!(b.considered, 2);
    assert_eq!(b.feasible, 2);
}

#[test]
fn a_small_cluster_with_a_known_best_placement() {
    // A 40% workload; n-h100 has one H100 with a 40% pool holding 40% (a
    // slot of the right size), n-a100 an idle A100, n-t4 a T4 with a 20%
    // pool. The best: the H100's 40% slot (pool match, no fragment left
    // for 20% requests… and the most efficient GPU).
    let mut c = core(&[
        node("n-t4", "Tesla T4", 1),
        node("n-a100", "NVIDIA A100-SXM4-80GB", 1),
        node("n-h100", "NVIDIA H100 80GB HBM3", 1),
    ]);
    let mut seed = with_share(small("seed40"), 40);
    seed.accepted_models = vec!["H100".into()];
    assert_eq!(place(&mut c, seed).node.as_deref(), Some("n-h100"));
    let mut seed20 = small("seed20");
    seed20.accepted_models = vec!["T4".into()];
    assert_eq!(place(&mut c, seed20).node.as_deref(), Some("n-t4"));
    let d = place(&mut c, with_share(small("x"), 40));
    assert_eq!(d.path, Path::Direct);
    assert_eq!(
        (d.node.as_deref(), d.gpus.as_slice()),
        (Some("n-h100"), &[0][..])
    );
    assert_eq!(d.top[0].node, "n-h100");
    assert_eq!(d.top.len(), 3, "all three GPUs were feasible");
    // Next 40%: the H100 pool has 20% left (full), the A100 is idle, the T4's
    // pool is 20%-sized: the idle A100 beats a reconfiguration.
    let d = place(&mut c, with_share(small("y"), 40));
    assert_eq!(d.node.as_deref(), Some("n-a100"), "{:#?}", d.top);
}

#[test]
fn reconfigure_when_the_gate_allows_and_queue_when_it_does_not() {
    let mut c = core(&[node("n1", "NVIDIA H100 80GB HBM3", 1)]);
    place(&mut c, small("a")); // pool 20 on GPU 0
    // A 40% request: GPU 0 has room (80%) but its pool is 20%-sized.
    c.observe(
        "n1",
        &NodeLoad {
            qps: Some(500.0),
            error_rate: Some(0.0),
            queue_depth: None,
            healthy: true,
            gpus: vec![],
        },
    )
    .unwrap();
    let busy = place(&mut c, with_share(small("b"), 40));
    assert_eq!(busy.path, Path::ScaleOut, "{}", busy.summary);
    assert!(
        busy.summary.contains("reconfiguration not safe"),
        "{}",
        busy.summary
    );
    assert!(busy.summary.contains("500 requests/s"), "{}", busy.summary);
    c.remove("b", 2_000).unwrap();
    // Quiet node: reconfigure, with a plan that restarts the one client.
    c.observe(
        "n1",
        &NodeLoad {
            qps: Some(3.0),
            error_rate: Some(0.0),
            queue_depth: None,
            healthy: true,
            gpus: vec![],
        },
    )
    .unwrap();
    let d = place(&mut c, with_share(small("c"), 40));
    assert_eq!(d.path, Path::Reconfigure, "{}", d.summary);
    let plan = d.plan.unwrap();
    assert_eq!(plan.restarts, 1);
    let actions: Vec<&str> = plan.steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "start-mps-server",
            "shadow",
            "canary",
            "drain",
            "stop-old-mps-server"
        ]
    );
    assert_eq!(c.node("n1").unwrap().gpus[0].pool, Some(40));
    // Errors above 1% close the gate; a maintenance window opens it again.
    let mut c = core(&[node("n1", "NVIDIA H100 80GB HBM3", 1)]);
    place(&mut c, small("a"));
    c.observe(
        "n1",
        &NodeLoad {
            qps: Some(1.0),
            error_rate: Some(0.05),
            queue_depth: None,
            healthy: true,
            gpus: vec![],
        },
    )
    .unwrap();
    let d = place(&mut c, with_share(small("b"), 40));
    assert_eq!(d.path, Path::ScaleOut);
    assert!(d.summary.contains("error rate 5.00%"), "{}", d.summary);
    c.control(
        Control::Maintenance {
            node: "n1".into(),
            from_ms: 0,
            to_ms: 10_000,
        },
        1_500,
    )
    .unwrap();
    // The queued workload is placed as the window opens.
    assert_eq!(c.placement("b").map(|p| p.node.as_str()), Some("n1"));
    // An operator's pause closes every gate.
    let mut c = core(&[node("n1", "NVIDIA H100 80GB HBM3", 1)]);
    place(&mut c, small("a"));
    c.control(Control::PauseReconfiguration {}, 1_000).unwrap();
    let d = place(&mut c, with_share(small("b"), 40));
    assert!(d.summary.contains("paused"), "{}", d.summary);
    assert!(!d.path.placed());
}

#[test]
fn repack_moves_lower_priority_work_and_respects_the_breaker() {
    // Two A100s: GPU 0 holds a 60% P2, GPU 1 a 20% P3 (pool 20). A P1 100%
    // request fits nowhere; moving the 20% P3 onto GPU 0 would need GPU 0's
    // pool (60) reconfigured, so the plan moves it… Keep it simple: GPU 0
    // holds 20% (pool 20) and GPU 1 holds 20% (pool 20): moving one next to
    // the other frees a whole GPU.
    let mut c = core(&[node("n1", "NVIDIA A100-SXM4-80GB", 2)]);
    let mut a = small("a");
    a.accepted_models = vec!["A100".into()];
    place(&mut c, a.clone());
    // Force b onto GPU 1.
    let b = small("b");
    let db = c.control(
        Control::Override {
            workload: "b".into(),
            node: "n1".into(),
            gpu: Some(1),
        },
        1_000,
    );
    assert!(
        matches!(db, Err(Refusal::NotFound(_))),
        "b is not placed yet"
    );
    place(&mut c, b);
    c.control(
        Control::Override {
            workload: "b".into(),
            node: "n1".into(),
            gpu: Some(1),
        },
        1_000,
    )
    .unwrap();
    c.control(
        Control::Unpin {
            workload: "b".into(),
        },
        1_000,
    )
    .unwrap();
    let ga = c.placement("a").unwrap().gpus[0];
    assert_ne!(ga, 1, "a and b on different GPUs");
    let mut big = small("big");
    big.priority = Priority::P1;
    big.share_pct = Some(100);
    let out = c.place(big.clone(), 2_000).unwrap();
    assert_eq!(out[0].path, Path::Repack, "{}", out[0].summary);
    let plan = out[0].plan.as_ref().unwrap();
    assert_eq!(plan.moves.len(), 1);
    assert_eq!(out.len(), 2, "the moved workload has its own decision");
    assert_eq!(out[1].path, Path::Repack);
    assert!(
        out[1].manifest.is_some(),
        "the moved workload gets its new Pod"
    );
    let gb = c.placement("big").unwrap().gpus[0];
    let g = &c.node("n1").unwrap().gpus[gb as usize];
    assert!(g.exclusive && g.workloads == ["big"]);

    // The same with the breaker tripped: no move, the request waits.
    let mut c2 = core(&[node("n1", "NVIDIA A100-SXM4-80GB", 2)]);
    a.preemptible = Some(false);
    place(&mut c2, a);
    place(
        &mut c2,
        Profile {
            preemptible: Some(false),
            ..small("b")
        },
    );
    c2.control(
        Control::Override {
            workload: "b".into(),
            node: "n1".into(),
            gpu: Some(1),
        },
        1_000,
    )
    .unwrap();
    c2.control(
        Control::Unpin {
            workload: "b".into(),
        },
        1_000,
    )
    .unwrap();
    c2.control(Control::TripBreaker {}, 1_000).unwrap();
    let out = c2.place(big, 2_000).unwrap();
    assert_eq!(out[0].path, Path::ScaleOut);
    assert!(
        out[0].summary.contains("circuit breaker"),
        "{}",
        out[0].summary
    );
    // Resetting the breaker retries the queue: now it repacks.
    let out = c2.control(Control::ResetBreaker {}, 3_000).unwrap();
    assert_eq!(out.len(), 3, "{out:#?}");
    assert_eq!(out[1].path, Path::Repack);
    assert_eq!(out[1].workload, "big");
}

#[test]
fn a_pinned_or_p0_workload_is_never_moved() {
    let h = |n: &str| node(n, "NVIDIA H100 80GB HBM3", 1);
    let mut c = core(&[h("n1"), h("n2")]);
    let mut a0 = small("a0");
    a0.priority = Priority::P0;
    assert_eq!(place(&mut c, a0).node.as_deref(), Some("n1"));
    c.control(Control::Cordon { node: "n1".into() }, 0).unwrap();
    let mut b = small("b");
    b.preemptible = Some(false);
    assert_eq!(place(&mut c, b).node.as_deref(), Some("n2"));
    c.control(Control::Uncordon { node: "n1".into() }, 0)
        .unwrap();
    c.control(
        Control::Pin {
            workload: "b".into(),
        },
        0,
    )
    .unwrap();
    // Either could join the other's 20% pool, freeing a GPU, but a0 is P0
    // and b is pinned.
    let mut big = with_share(small("big"), 100);
    big.priority = Priority::P1;
    let d = place(&mut c, big);
    assert!(!d.path.placed(), "{}", d.summary);
    // Unpinning b lets the waiting request repack it.
    let out = c
        .control(
            Control::Unpin {
                workload: "b".into(),
            },
            1_000,
        )
        .unwrap();
    assert_eq!(out.len(), 3, "{out:#?}");
    assert_eq!(
        (out[1].workload.as_str(), out[1].path),
        ("big", Path::Repack)
    );
    assert_eq!(c.placement("b").unwrap().node, "n1");
    assert_eq!(c.placement("big").unwrap().node, "n2");
}

#[test]
fn preemption_evicts_lower_priorities_into_the_queue() {
    let mut c = core(&[node("n1", "NVIDIA H100 80GB HBM3", 1)]);
    let mut low = with_share(small("low"), 100);
    low.priority = Priority::P3;
    assert_eq!(place(&mut c, low).path, Path::Direct);
    // Equal priority: no preemption.
    let mut same = with_share(small("same"), 100);
    same.priority = Priority::P3;
    assert_eq!(place(&mut c, same).path, Path::ScaleOut);
    c.remove("same", 1_000).unwrap();
    // A P0 preempts the P3.
    let mut urgent = with_share(small("urgent"), 100);
    urgent.priority = Priority::P0;
    let out = c.place(urgent, 2_000).unwrap();
    assert_eq!(out[0].path, Path::Preempt, "{}", out[0].summary);
    assert_eq!(out[0].preempted, ["low"]);
    assert_eq!(out[1].workload, "low");
    assert_eq!(out[1].path, Path::Queue);
    assert!(c.placement("low").is_none());
    assert!(c.queued_workload("low").is_some());
    // When the P0 leaves, the P3 comes back.
    let out = c.remove("urgent", 3_000).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[1].workload.as_str(), out[1].path),
        ("low", Path::Direct)
    );
    // A non-preemptible P2 is not evicted.
    let mut c = core(&[node("n1", "NVIDIA H100 80GB HBM3", 1)]);
    let mut keep = with_share(small("keep"), 100);
    keep.preemptible = Some(false);
    place(&mut c, keep);
    let mut urgent = with_share(small("urgent"), 100);
    urgent.priority = Priority::P0;
    assert_eq!(place(&mut c, urgent).path, Path::ScaleOut);
}

#[test]
fn scale_out_names_the_node_shape_or_queues() {
    let mut c = core(&[node("n1", "Tesla T4", 1)]);
    let mut large = small("large");
    large.model_size_gb = 60.0; // 600: large, prefers H100; 60 GB won't fit a T4
    let d = place(&mut c, large.clone());
    assert_eq!(d.path, Path::ScaleOut);
    // One of the configured shapes: the default's eight-H100 node.
    let shape = d.scale_out.unwrap();
    assert_eq!((shape.gpu_model.as_str(), shape.gpus), ("H100", 8));
    assert!(shape.cpu_milli >= large.cpu_milli && shape.memory_mib >= large.memory_mib);
    assert!(
        d.ruled_out
            .iter()
            .any(|r| r.constraint == "gpu-memory" && r.examples == ["n1/0"])
    );
    // Without scale-out, nothing known could ever hold it: rejected, with
    // the constraint that rules it out.
    let cfg = Config {
        scale_out: false,
        ..Config::default()
    };
    let mut c = core_with(cfg.clone(), &[node("n1", "Tesla T4", 1)]);
    let d = place(&mut c, large.clone());
    assert_eq!(d.path, Path::Reject, "{}", d.summary);
    assert!(d.summary.starts_with("model_size_gb:"), "{}", d.summary);
    // A node that could hold it, busy: the priority queue; it drains on
    // the next removal.
    let mut c = core_with(cfg, &[node("n1", "NVIDIA H100 80GB HBM3", 1)]);
    let mut hold = with_share(small("hold"), 100);
    hold.preemptible = Some(false);
    assert!(place(&mut c, hold).path.placed());
    assert_eq!(place(&mut c, large).path, Path::Queue);
    let out = c.remove("hold", 5_000).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[1].workload.as_str(), out[1].node.as_deref()),
        ("large", Some("n1"))
    );
}

/// A request no known node or scale-out shape could hold is rejected with
/// the constraint that rules it out; with no node known and no scale-out
/// it waits.
#[test]
fn hopeless_requests_are_rejected_naming_the_constraint() {
    let mut c = core(&[node("n1", "NVIDIA H100 80GB HBM3", 2)]);
    type Case = (&'static str, Box<dyn Fn(&mut Profile)>);
    let cases: Vec<Case> = vec![
        ("cpu_milli:", Box::new(|p| p.cpu_milli = 4_000_000)),
        ("memory_mib:", Box::new(|p| p.memory_mib = 60 << 20)),
        (
            "gpus:",
            Box::new(|p| {
                p.gpus = Some(16);
                p.share_pct = None;
            }),
        ),
        (
            "accepted_models:",
            Box::new(|p| p.accepted_models = vec!["Z9000".into()]),
        ),
        ("model_size_gb:", Box::new(|p| p.model_size_gb = 200.0)),
        (
            "max_cost_per_hour:",
            Box::new(|p| p.max_cost_per_hour = Some(0.0001)),
        ),
    ];
    for (i, (why, set)) in cases.iter().enumerate() {
        let mut p = small(&format!("w{i}"));
        set(&mut p);
        let d = place(&mut c, p);
        assert_eq!(d.path, Path::Reject, "{why} {}", d.summary);
        assert!(d.summary.starts_with(why), "{why}: {}", d.summary);
    }
    assert!(c.queued().next().is_none() && c.placements().next().is_none());
    // The unknown model's reason lists what the cluster and shapes have.
    let mut p = small("z");
    p.accepted_models = vec!["Z9000".into()];
    let d = place(&mut c, p);
    assert!(d.summary.contains("NVIDIA H100 80GB HBM3"), "{}", d.summary);
    // Nothing known at all and no scale-out: it waits for nodes.
    let cfg = Config {
        scale_out: false,
        ..Config::default()
    };
    let mut c = core_with(cfg, &[]);
    assert_eq!(place(&mut c, small("early")).path, Path::Queue);
}

#[test]
fn queue_order_is_priority_then_arrival() {
    let cfg = Config {
        scale_out: false,
        ..Config::default()
    };
    let mut c = core_with(cfg, &[node("n1", "NVIDIA H100 80GB HBM3", 1)]);
    let mut hold = with_share(small("hold"), 100);
    hold.priority = Priority::P0;
    place(&mut c, hold);
    for (name, pr) in [
        ("p3", Priority::P3),
        ("p1a", Priority::P1),
        ("p1b", Priority::P1),
    ] {
        let mut p = with_share(small(name), 100);
        p.priority = pr;
        p.preemptible = Some(false);
        assert_eq!(place(&mut c, p).path, Path::Queue);
    }
    let order: Vec<&str> = c.queued().map(|q| q.id.as_str()).collect();
    assert_eq!(order, ["p1a", "p1b", "p3"]);
    let out = c.remove("hold", 2_000).unwrap();
    assert_eq!(out[1].workload, "p1a");
}

// Constraints: one case rejected, one accepted.

#[test]
fn anti_affinity_keeps_replicas_apart() {
    let mut c = core(&[
        node("n1", "NVIDIA A100-SXM4-80GB", 2),
        node("n2", "NVIDIA A100-SXM4-80GB", 1),
    ]);
    let mut r1 = small("r1");
    r1.model_id = "llama".into();
    let mut r2 = r1.clone();
    r2.name = "r2".into();
    let mut r3 = r1.clone();
    r3.name = "r3".into();
    let n1 = place(&mut c, r1).node.unwrap();
    let d2 = place(&mut c, r2);
    assert!(d2.path.placed());
    assert_ne!(d2.node.unwrap(), n1, "the replica goes to the other node");
    let d3 = place(&mut c, r3);
    assert!(!d3.path.placed(), "no third node for a third replica");
    assert!(
        d3.ruled_out
            .iter()
            .any(|r| r.constraint == "anti-affinity" && r.count == 2)
    );
    // Another model shares the node.
    assert!(place(&mut c, small("other")).path.placed());
}

#[test]
fn a_100_percent_request_gets_an_exclusive_gpu() {
    let mut spec = node("n1", "NVIDIA H100 80GB HBM3", 1);
    spec.gpus[0].throttling = true; // oversubscription allowed to 120%
    let mut c = core(&[spec]);
    place(&mut c, small("a")); // 20%
    let d = place(&mut c, with_share(small("whole"), 100));
    assert!(
        !d.path.placed(),
        "20 + 100 ≤ 120 but a whole GPU must be exclusive"
    );
    assert!(d.ruled_out.iter().any(|r| r.constraint == "exclusive"));
    c.remove("a", 2_000).unwrap(); // the queued one takes the GPU
    let g = &c.node("n1").unwrap().gpus[0];
    assert!(g.exclusive && g.workloads == ["whole"]);
    // Nothing joins an exclusive GPU, even where throttling allows 120%.
    let d = place(&mut c, small("b"));
    assert!(!d.path.placed());
    assert!(d.ruled_out.iter().any(|r| r.constraint == "exclusive"));
}

#[test]
fn oversubscription_only_where_throttling_is_on() {
    let mut on = node("on", "NVIDIA H100 80GB HBM3", 1);
    on.gpus[0].throttling = true;
    let off = node("off", "NVIDIA H100 80GB HBM3", 1);
    let mut c = core(&[off]);
    for i in 0..6 {
        let d = place(&mut c, small(&format!("w{i}")));
        assert_eq!(d.path.placed(), i < 5, "w{i}: {}", d.summary);
    }
    let mut c = core(&[on]);
    for i in 0..7 {
        let d = place(&mut c, small(&format!("w{i}")));
        assert_eq!(d.path.placed(), i < 6, "w{i}: {}", d.summary);
    }
    assert_eq!(c.node("on").unwrap().gpus[0].used_pct, 120);
}

#[test]
fn accepted_models_are_honoured() {
    let mut c = core(&[
        node("t4", "Tesla T4", 1),
        node("a100", "NVIDIA A100-SXM4-80GB", 1),
    ]);
    let mut p = small("a");
    p.accepted_models = vec!["T4".into()];
    assert_eq!(place(&mut c, p).node.as_deref(), Some("t4"));
    let mut p = small("b");
    p.accepted_models = vec!["H100".into()];
    let d = place(&mut c, p);
    assert!(!d.path.placed());
    assert_eq!(
        d.ruled_out
            .iter()
            .find(|r| r.constraint == "accepted-models")
            .unwrap()
            .count,
        2
    );
}

#[test]
fn cpu_and_memory_must_fit() {
    let mut c = core(&[node("n1", "NVIDIA A100-SXM4-80GB", 4)]);
    let mut p = small("cpu");
    p.cpu_milli = 64_001;
    let d = place(&mut c, p);
    assert!(!d.path.placed());
    assert!(d.ruled_out.iter().any(|r| r.constraint == "cpu"));
    let mut p = small("mem");
    p.memory_mib = 512 * 1024 + 1;
    let d = place(&mut c, p);
    assert!(d.ruled_out.iter().any(|r| r.constraint == "memory"));
    let mut p = small("fits");
    p.cpu_milli = 64_000;
    p.memory_mib = 512 * 1024;
    assert!(place(&mut c, p).path.placed());
    // Now the node's CPU is gone: GPUs stay free but nothing else fits.
    let d = place(&mut c, small("after"));
    assert!(!d.path.placed());
}

#[test]
fn gpu_memory_must_fit() {
    let mut c = core(&[node("n1", "Tesla T4", 1)]); // 16 GB
    let mut a = small("a");
    a.model_size_gb = 9.0; // 90 + 40.96 → medium 40%
    assert!(place(&mut c, a).path.placed());
    let mut b = small("b");
    b.model_size_gb = 8.0; // 80 + 40.96 → medium 40%: 17 GB > 16
    let d = place(&mut c, b);
    assert!(
        d.ruled_out.iter().any(|r| r.constraint == "gpu-memory"),
        "{:#?}",
        d.ruled_out
    );
    let mut b = small("b2");
    b.model_size_gb = 7.0; // 16 GB exactly
    assert!(place(&mut c, b).path.placed());
}

#[test]
fn gpu_memory_counts_the_limit_not_the_weights() {
    let mut c = core(&[node("n1", "Tesla T4", 1)]); // 16 GB
    // 2 GB of weights (a small class, 20%) but 10 GB its replica may hold.
    let mut a = small("a");
    a.gpu_memory_gb = Some(10.0);
    assert!(place(&mut c, a).path.placed());
    let mut b = small("b");
    b.gpu_memory_gb = Some(7.0); // 17 GB of limits > 16
    let d = place(&mut c, b);
    assert!(
        d.ruled_out.iter().any(|r| r.constraint == "gpu-memory"),
        "{:#?}",
        d.ruled_out
    );
    // Without a limit only its weights count: it fits.
    assert!(place(&mut c, small("c")).path.placed());
    // A limit under the weights is refused, naming the field.
    let mut bad = small("d");
    bad.gpu_memory_gb = Some(1.0);
    let e = c.place(bad, 1_000).unwrap_err().to_string();
    assert!(e.contains("gpu_memory_gb"), "{e}");
}

#[test]
fn tenant_quotas_in_gpu_hours() {
    let mut cfg = Config::default();
    cfg.quotas.insert("t1".into(), 1.0); // one GPU-hour
    let mut c = core_with(cfg, &[node("n1", "NVIDIA H100 80GB HBM3", 2)]);
    // 20% for 3 hours = 0.6 GPU-hours: fits; a second one does not.
    let mut p = small("a");
    p.expected_duration_s = 3 * 3600;
    assert!(place(&mut c, p.clone()).path.placed());
    assert!((c.usage("t1") - 0.6).abs() < 1e-9);
    p.name = "b".into();
    p.model_id = "b".into();
    let d = place(&mut c, p.clone());
    assert_eq!(d.path, Path::Reject);
    assert!(d.summary.contains("quota"), "{}", d.summary);
    // Another tenant is not limited.
    p.name = "c".into();
    p.model_id = "c".into();
    p.tenant = "t2".into();
    assert!(place(&mut c, p.clone()).path.placed());
    // Removing "a" after 1.5 of its 3 hours refunds half of its 0.6.
    c.remove("a", 1_000 + 5_400_000).unwrap();
    assert!((c.usage("t1") - 0.3).abs() < 1e-9, "{}", c.usage("t1"));
    p.name = "d".into();
    p.model_id = "d".into();
    p.tenant = "t1".into();
    assert!(place(&mut c, p).path.placed());
}

#[test]
fn cost_limits() {
    let mut c = core(&[
        node("h100", "NVIDIA H100 80GB HBM3", 1),
        node("t4", "Tesla T4", 1),
    ]);
    // 20% of an H100 costs 1.96/h, of a T4 0.106/h.
    let mut p = small("cheap");
    p.max_cost_per_hour = Some(0.5);
    assert_eq!(place(&mut c, p).node.as_deref(), Some("t4"));
    let mut p = small("too-cheap");
    p.max_cost_per_hour = Some(0.01);
    let d = place(&mut c, p);
    assert_eq!(
        d.path,
        Path::Reject,
        "no GPU anywhere is that cheap: {}",
        d.summary
    );
    let mut p = small("rich");
    p.max_cost_per_hour = Some(5.0);
    p.accepted_models = vec!["H100".into()];
    assert_eq!(place(&mut c, p).node.as_deref(), Some("h100"));
}

#[test]
fn cordoned_and_unhealthy_nodes_take_nothing() {
    let mut c = core(&[node("n1", "Tesla T4", 1), node("n2", "Tesla T4", 1)]);
    c.control(Control::Cordon { node: "n1".into() }, 0).unwrap();
    c.observe(
        "n2",
        &NodeLoad {
            qps: Some(0.0),
            error_rate: Some(0.0),
            queue_depth: None,
            healthy: false,
            gpus: vec![],
        },
    )
    .unwrap();
    let d = place(&mut c, small("a"));
    assert!(!d.path.placed());
    let names: Vec<&str> = d.ruled_out.iter().map(|r| r.constraint.as_str()).collect();
    assert_eq!(names, ["cordoned", "unhealthy"]);
    assert!(matches!(
        c.control(
            Control::Cordon {
                node: "nope".into()
            },
            0
        ),
        Err(Refusal::NotFound(_))
    ));
}

#[test]
fn locality_and_preferred_models_raise_the_score() {
    let mut near = node("near", "NVIDIA A100-SXM4-80GB", 1);
    near.labels.insert("zone".into(), "z1".into());
    let mut c = core(&[node("far", "NVIDIA A100-SXM4-80GB", 1), near]);
    let mut p = small("a");
    p.locality = vec!["zone=z1".into()];
    let d = place(&mut c, p);
    assert_eq!(d.node.as_deref(), Some("near"));
    assert_eq!(d.top[0].terms.locality, 1.0);
    assert_eq!(d.top[1].terms.locality, 0.0);
    // Large prefers H100 over an equally idle A100.
    let mut c = core(&[
        node("a", "NVIDIA A100-SXM4-80GB", 1),
        node("h", "NVIDIA H100 80GB HBM3", 1),
    ]);
    let mut p = small("big");
    p.model_size_gb = 60.0;
    let d = place(&mut c, p);
    assert_eq!(d.node.as_deref(), Some("h"));
    assert_eq!(d.top[0].terms.affinity, 1.0);
}

#[test]
fn multi_gpu_requests_take_whole_gpus_on_one_node() {
    let mut c = core(&[
        node("n1", "NVIDIA H100 80GB HBM3", 2),
        node("n2", "NVIDIA H100 80GB HBM3", 4),
    ]);
    place(&mut c, small("a"));
    let mut p = small("tp4");
    p.model_size_gb = 140.0;
    p.gpus = Some(4);
    let d = place(&mut c, p);
    assert_eq!(d.path, Path::Direct, "{}", d.summary);
    assert_eq!(d.gpus.len(), 4);
    let m = serde_json::to_value(d.manifest.unwrap()).unwrap();
    assert_eq!(
        m["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "4"
    );
}

#[test]
fn the_manifest_binds_the_pod() {
    let mut c = core(&[node("n1", "NVIDIA H100 80GB HBM3", 1)]);
    let d = place(&mut c, with_share(small("svc"), 40));
    let m = serde_json::to_value(d.manifest.unwrap()).unwrap();
    assert_eq!(m["metadata"]["name"], "svc");
    let mps: serde_json::Value = serde_json::from_str(
        m["metadata"]["annotations"]["mps.nvidia.com/config"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(mps["activeThreadPercentage"], 40);
    assert_eq!(mps["gpus"], serde_json::json!([0]));
    assert_eq!(m["spec"]["nodeName"], "n1");
    assert_eq!(
        m["spec"]["nodeSelector"]["nvidia.com/gpu.product"],
        "NVIDIA-H100-80GB-HBM3"
    );
    let ctr = &m["spec"]["containers"][0];
    assert_eq!(ctr["resources"]["limits"]["nvidia.com/mps"], "40");
    assert_eq!(ctr["resources"]["limits"]["nvidia.com/gpu"], "1");
    let env: Vec<(String, String)> = ctr["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(env.contains(&("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(), "40".into())));
    assert!(
        env.iter()
            .any(|(k, v)| k == "LD_PRELOAD" && v.ends_with("libvagus_shim.so"))
    );
}

#[test]
fn bad_requests_name_the_field_and_change_nothing() {
    let mut c = core(&[node("n1", "Tesla T4", 1)]);
    let cases: Vec<(Profile, &str)> = vec![
        (
            Profile {
                name: "Bad_Name".into(),
                ..small("x")
            },
            "name",
        ),
        (
            Profile {
                model_size_gb: f64::NAN,
                ..small("x")
            },
            "model_size_gb",
        ),
        (
            Profile {
                batch: 0,
                ..small("x")
            },
            "batch",
        ),
        (
            Profile {
                share_pct: Some(0),
                ..small("x")
            },
            "share_pct",
        ),
        (
            Profile {
                gpus: Some(17),
                ..small("x")
            },
            "gpus",
        ),
        (
            Profile {
                tenant: " ".into(),
                ..small("x")
            },
            "tenant",
        ),
        (
            Profile {
                accepted_models: vec!["".into()],
                ..small("x")
            },
            "accepted_models[0]",
        ),
    ];
    for (p, field) in cases {
        match c.place(p, 0) {
            Err(Refusal::Invalid(e)) => assert_eq!(e.field, field, "{e}"),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(c.placements().count(), 0);
    place(&mut c, small("x"));
    assert!(matches!(c.place(small("x"), 0), Err(Refusal::Conflict(_))));
    assert!(matches!(c.remove("nope", 0), Err(Refusal::NotFound(_))));
    let bad = NodeSpec {
        gpus: vec![gpu("Mystery GPU")],
        ..node("m", "T4", 0)
    };
    assert_eq!(c.upsert_node(&bad).unwrap_err().field, "gpus[0].model");
}

#[test]
fn decisions_do_not_depend_on_the_clock_or_the_run() {
    // The same requests in the same order give the same decisions.
    let run = || {
        let nodes: Vec<NodeSpec> = (0..20)
            .map(|i| {
                node(
                    &format!("n{i}"),
                    if i % 3 == 0 {
                        "Tesla T4"
                    } else {
                        "NVIDIA A100-SXM4-80GB"
                    },
                    4,
                )
            })
            .collect();
        let mut c = core(&nodes);
        let mut out = Vec::new();
        for i in 0..200u32 {
            let mut p = small(&format!("w{i}"));
            p.model_size_gb = 1.0 + (i % 7) as f64 * 9.0;
            p.model_id = format!("m{}", i % 13);
            let d = c.place(p, i as u64).unwrap().remove(0);
            out.push((d.path, d.node, d.gpus));
        }
        out
    };
    assert_eq!(run(), run());
}

#[test]
fn cpu_heavy_work_goes_where_it_strands_no_gpu() {
    // dense: 8 GPUs and 16 cores (2 per GPU); roomy: 2 GPUs and 64 cores.
    // 12 cores on the dense node would leave its GPUs without CPU.
    let dense = NodeSpec {
        cpu_milli: 16_000,
        ..node("dense", "Tesla T4", 8)
    };
    let roomy = NodeSpec {
        cpu_milli: 64_000,
        ..node("roomy", "Tesla T4", 2)
    };
    // A fixed mix of whole-GPU work at 8 cores per GPU, scored flat.
    let cfg = Config {
        mix: vec![Shape::new(8000, 1, 100, Vec::new())],
        cpu_need_by_size: 0.0,
        ..Config::default()
    };
    let mut c = core_with(cfg, &[dense, roomy]);
    let mut p = small("cpu-heavy");
    p.cpu_milli = 12_000;
    let d = place(&mut c, p);
    assert_eq!(d.node.as_deref(), Some("roomy"), "{:#?}", d.top);
    let dense_top = d.top.iter().find(|t| t.node == "dense").unwrap();
    // Stranded before: 8 GPUs − 16/8 fed = 6; after: 7.8 − 4/8 = 7.3.
    assert!(
        (dense_top.terms.cpu_balance + 1.3).abs() < 1e-9,
        "{}",
        dense_top.terms.cpu_balance
    );
    assert_eq!(d.top[0].terms.cpu_balance, 0.0);
    // Light CPU strands nothing anywhere: the term is silent.
    let d = place(&mut c, small("light"));
    assert!(
        d.top.iter().all(|t| t.terms.cpu_balance == 0.0),
        "{:#?}",
        d.top
    );
}

#[test]
fn a_node_that_goes_down_has_its_workloads_placed_elsewhere_most_important_first() {
    let h100 = "NVIDIA H100 80GB HBM3";
    let mut c = core(&[node("a", h100, 1), node("b", h100, 1)]);
    // b holds a P2 on 40% of its GPU (two slots of its pool); a the P3 and the P0 (b cordoned meanwhile).
    let mut other = with_share(small("other"), 40);
    other.model_id = "other".into();
    c.control(Control::Cordon { node: "a".into() }, 0).unwrap();
    assert_eq!(place(&mut c, other).node.as_deref(), Some("b"));
    c.control(Control::Uncordon { node: "a".into() }, 0)
        .unwrap();
    c.control(Control::Cordon { node: "b".into() }, 0).unwrap();
    let mut low = with_share(small("low"), 40);
    low.priority = Priority::P3;
    let mut top = with_share(small("top"), 40);
    top.priority = Priority::P0;
    assert_eq!(place(&mut c, low).node.as_deref(), Some("a"));
    assert_eq!(place(&mut c, top).node.as_deref(), Some("a"));
    c.control(
        Control::Pin {
            workload: "top".into(),
        },
        0,
    )
    .unwrap();
    c.control(
        Control::Weight {
            workload: "top".into(),
            weight: 40,
        },
        0,
    )
    .unwrap();
    c.control(Control::Uncordon { node: "b".into() }, 0)
        .unwrap();
    let charged = c.usage("t1");

    // The P0 goes first and takes b's free slot; the P3 waits.
    let out = c.node_down("a", "its agent is silent", 5_000).unwrap();
    let got: Vec<(&str, Path)> = out.iter().map(|d| (d.workload.as_str(), d.path)).collect();
    assert_eq!(
        got,
        [
            ("top", Path::Evacuate),
            ("top", Path::Direct),
            ("low", Path::Evacuate),
            ("low", Path::ScaleOut),
        ],
        "{:#?}",
        out.iter().map(|d| &d.summary).collect::<Vec<_>>()
    );
    assert!(
        out[0].summary.contains("its agent is silent"),
        "{}",
        out[0].summary
    );
    assert!(out.windows(2).all(|w| w[0].seq < w[1].seq));
    let top = c.placement("top").unwrap();
    assert_eq!(
        (top.node.as_str(), top.pinned, top.weight),
        ("b", true, Some(40))
    );
    assert!(c.queued_workload("low").is_some());
    // Nothing new goes to a down node; the charge moved with the work
    // placed again, and what waits is not charged (0.4 GPU-hours).
    assert_eq!(
        c.node("a").unwrap().down.as_deref(),
        Some("its agent is silent")
    );
    assert!(
        (c.usage("t1") - (charged - 0.4)).abs() < 1e-9,
        "{} vs {charged}",
        c.usage("t1")
    );
    let d = place(&mut c, with_share(small("new"), 40));
    assert!(!d.path.placed(), "{}", d.summary);
    assert!(d.ruled_out.iter().any(|r| r.constraint == "unhealthy"));
    // Down twice is nothing; an unknown node is named.
    assert!(c.node_down("a", "again", 6_000).unwrap().is_empty());
    assert!(matches!(
        c.node_down("zz", "x", 6_000),
        Err(Refusal::NotFound(_))
    ));

    // Back: the queue is tried, most important first.
    c.remove("new", 7_000).unwrap();
    let out = c.node_up("a", 8_000).unwrap();
    let got: Vec<(&str, Path)> = out.iter().map(|d| (d.workload.as_str(), d.path)).collect();
    assert_eq!(got, [("low", Path::Direct)]);
    assert_eq!(c.placement("low").unwrap().node, "a");
    assert!(
        (c.usage("t1") - charged).abs() < 1e-9,
        "{} vs {charged}",
        c.usage("t1")
    );
    assert!(c.node("a").unwrap().down.is_none());
    assert!(c.node_up("a", 9_000).unwrap().is_empty());
}

#[test]
fn a_gpu_whose_mps_daemon_fails_sends_its_shares_to_gpus_of_their_own() {
    let h100 = "NVIDIA H100 80GB HBM3";
    let mut c = core(&[node("a", h100, 2)]);
    let mut low = with_share(small("low"), 40);
    low.priority = Priority::P3;
    let mut top = with_share(small("top"), 40);
    top.priority = Priority::P0;
    let t = place(&mut c, top);
    let l = place(&mut c, low);
    assert_eq!(
        (t.gpus.clone(), l.gpus.clone()),
        (vec![0], vec![0]),
        "one pool"
    );

    let out = c
        .mps_down("a", 0, "no daemon answers", false, 5_000)
        .unwrap();
    let got: Vec<(&str, Path)> = out.iter().map(|d| (d.workload.as_str(), d.path)).collect();
    assert_eq!(
        got,
        [
            ("top", Path::Evacuate),
            ("top", Path::Direct),
            ("low", Path::Evacuate),
            ("low", Path::Direct),
        ],
        "{:#?}",
        out.iter().map(|d| &d.summary).collect::<Vec<_>>()
    );
    assert!(
        out[0]
            .summary
            .contains("MPS control daemon is down (no daemon answers)"),
        "{}",
        out[0].summary
    );
    // Each holds a GPU whole: one of them the GPU without its daemon.
    let (top, low) = (c.placement("top").unwrap(), c.placement("low").unwrap());
    assert_eq!((top.share_pct, low.share_pct), (100, 100));
    assert_eq!(
        (top.profile.share_pct, low.profile.share_pct),
        (Some(100), Some(100))
    );
    let mut gpus = [top.gpus[0], low.gpus[0]];
    gpus.sort();
    assert_eq!(gpus, [0, 1]);
    let g0 = &c.node("a").unwrap().gpus[0];
    assert!(g0.exclusive && g0.mps_down.is_some());
    // Down twice is nothing; an unknown GPU is named.
    assert!(
        c.mps_down("a", 0, "again", false, 6_000)
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        c.mps_down("a", 7, "x", false, 6_000),
        Err(Refusal::NotFound(_))
    ));

    // A share never goes to a GPU without its daemon, even an idle one;
    // a whole-GPU request takes it.
    c.remove("top", 7_000).unwrap();
    c.remove("low", 7_000).unwrap();
    for id in ["new", "new2"] {
        let d = place(&mut c, with_share(small(id), 40));
        assert_eq!(
            (d.path, d.gpus.clone()),
            (Path::Direct, vec![1]),
            "{}",
            d.summary
        );
    }
    let d = place(&mut c, with_share(small("new3"), 40));
    assert!(!d.path.placed(), "{}", d.summary);
    assert!(
        d.ruled_out.iter().any(|r| r.constraint == "exclusive"),
        "{:?}",
        d.ruled_out
    );
    c.remove("new3", 7_000).unwrap();
    let mut whole = with_share(small("whole"), 100);
    whole.model_id = "whole".into();
    let d = place(&mut c, whole);
    assert_eq!(
        (d.path, d.gpus.clone()),
        (Path::Direct, vec![0]),
        "{}",
        d.summary
    );

    // Back: it takes shares again, and the queue is tried (nothing fits yet).
    assert!(c.mps_up("a", 0, 8_000).unwrap().is_empty());
    assert!(c.node("a").unwrap().gpus[0].mps_down.is_none());
    c.remove("whole", 9_000).unwrap();
    let d = place(&mut c, with_share(small("later"), 40));
    assert_eq!(
        (d.path, d.gpus.clone()),
        (Path::Direct, vec![0]),
        "{}",
        d.summary
    );
}

#[test]
fn a_rebalance_moves_a_share_only_onto_a_gpu_at_least_as_full() {
    let h100 = "NVIDIA H100 80GB HBM3";
    let mut c = core(&[node("a", h100, 1), node("b", h100, 1)]);
    // a: three 20% shares on its GPU's pool; b: one (each placed with the
    // other node cordoned).
    let serving_on = |mut p: Profile, port: u16| {
        p.launch = Some(vagus_decision::Launch {
            command: "vagus".into(),
            args: vec![],
            env: Default::default(),
            port: Some(port),
        });
        p
    };
    c.control(Control::Cordon { node: "b".into() }, 0).unwrap();
    for id in ["a1", "a2", "a3"] {
        // a1 serves on the port lone's shadow would have taken.
        let p = with_share(small(id), 20);
        let p = if id == "a1" { serving_on(p, 10_000) } else { p };
        let d = place(&mut c, p);
        assert_eq!(d.node.as_deref(), Some("a"), "{}", d.summary);
    }
    c.control(Control::Uncordon { node: "b".into() }, 0)
        .unwrap();
    c.control(Control::Cordon { node: "a".into() }, 0).unwrap();
    let d = place(&mut c, serving_on(with_share(small("lone"), 20), 9_000));
    assert_eq!(d.node.as_deref(), Some("b"), "{}", d.summary);
    c.control(Control::Uncordon { node: "a".into() }, 0)
        .unwrap();
    let mut eff = c.node_efficiency();
    eff.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(eff, [("a".to_string(), 0.6), ("b".to_string(), 0.2)]);
    // The lone share can go to a's fuller GPU; a's shares nowhere (b's GPU
    // is emptier than theirs).
    assert_eq!(c.consolidation_target("lone"), Some(("a".into(), 0)));
    assert_eq!(c.consolidation_target("a1"), None);
    let out = c.place_shadow("lone", "lone-r1", 20, true, 1_000).unwrap();
    assert_eq!(
        (out[0].node.as_deref(), out[0].gpus.clone()),
        (Some("a"), vec![0])
    );
    // Its port: the workload's + port_offset (1,000), taken there, so the next.
    let port = |c: &Core, id: &str| {
        c.placement(id)
            .unwrap()
            .profile
            .launch
            .as_ref()
            .unwrap()
            .port
    };
    assert_eq!(port(&c, "lone-r1"), Some(10_001));
    let out = c.apply_shadow("lone", "lone-r1", 2_000).unwrap();
    assert!(
        out[0].summary.contains("on a GPU [0]"),
        "{}",
        out[0].summary
    );
    let mut eff = c.node_efficiency();
    eff.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(eff, [("a".to_string(), 0.8)], "b holds nothing now");
    // Without a fuller GPU with room, no consolidating shadow is placed.
    assert!(c.place_shadow("a1", "a1-r1", 20, true, 3_000).is_err());
    assert!(c.placement("a1-r1").is_none());
}

#[test]
fn a_gpu_whose_mps_configuration_conflicts_takes_nothing_and_its_work_goes_elsewhere() {
    let h100 = "NVIDIA H100 80GB HBM3";
    let mut c = core(&[node("a", h100, 2)]);
    let mut low = with_share(small("low"), 40);
    low.priority = Priority::P3;
    let mut top = with_share(small("top"), 40);
    top.priority = Priority::P0;
    place(&mut c, top);
    place(&mut c, low);
    let out = c.mps_down("a", 0, "a server at 30%", true, 5_000).unwrap();
    let got: Vec<(&str, Path)> = out.iter().map(|d| (d.workload.as_str(), d.path)).collect();
    // The P0 takes the other GPU whole; the P3 has nowhere left: it waits.
    assert_eq!(
        got[..3],
        [
            ("top", Path::Evacuate),
            ("top", Path::Direct),
            ("low", Path::Evacuate)
        ]
    );
    assert!(!got[3].1.placed(), "{:?}", out[3].summary);
    assert!(
        out[0].summary.contains("MPS configuration conflicts"),
        "{}",
        out[0].summary
    );
    assert_eq!(c.placement("top").unwrap().gpus, [1]);
    assert!(c.queued_workload("low").is_some());
    // Not even a whole-GPU request goes there.
    let mut whole = with_share(small("whole"), 100);
    whole.model_id = "whole".into();
    let d = place(&mut c, whole);
    assert!(!d.path.placed(), "{}", d.summary);
    c.remove("whole", 6_000).unwrap();
    // Cleared: the queue is tried, and the P3 holds GPU 0 whole.
    let out = c.mps_up("a", 0, 7_000).unwrap();
    assert_eq!(
        out.iter().filter(|d| d.path.placed()).count(),
        1,
        "{out:#?}"
    );
    let g0 = &c.node("a").unwrap().gpus[0];
    assert!(g0.mps_down.is_none() && !g0.mps_conflict);
    assert_eq!(c.placement("low").unwrap().gpus, [0]);
}
