//! The replay against the FGD paper's published numbers on the openb trace
//! (`../shared/data/openb/`, or `VAGUS_OPENB_DIR`).

use vagus_replay::openb;
use vagus_replay::policy::Kind;
use vagus_replay::replay::{mean_curve, replay_seeds};

fn data_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("VAGUS_OPENB_DIR") {
        return d.into();
    }
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|a| a.join("shared/data/openb"))
        .chain([std::path::PathBuf::from("/work/shared/data/openb")])
        .find(|p| p.is_dir())
        .expect("the openb trace (set VAGUS_OPENB_DIR)")
}

fn load(
    pods: &str,
) -> (
    Vec<vagus_replay::cluster::Node>,
    Vec<vagus_replay::cluster::Pod>,
) {
    let d = data_dir();
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    (
        openb::nodes("nodes", &read("openb_node_list_gpu_node.csv")).unwrap(),
        openb::pods(pods, &read(pods)).unwrap(),
    )
}

/// The paper's measures, seeds 42–51 on the default trace: mean
/// allocation at 130% arrived load, and mean fragmentation at 80%.
fn measures(kind: Kind) -> (f64, f64) {
    let (nodes, pods) = load("openb_pod_list_default.csv");
    let seeds: Vec<u64> = (42..52).collect();
    let runs = replay_seeds(&nodes, &pods, kind, &seeds, 2, &|_| {});
    (
        mean_curve(&runs, |r| &r.allocation)[130],
        mean_curve(&runs, |r| &r.fragmentation)[80],
    )
}

fn mean_at_130(kind: Kind) -> f64 {
    measures(kind).0
}

#[test]
fn the_trace_loads_as_published() {
    let (nodes, pods) = load("openb_pod_list_default.csv");
    assert_eq!(nodes.len(), 1213);
    assert_eq!(nodes.iter().map(|n| n.gpus.len()).sum::<usize>(), 6212);
    assert_eq!(pods.len(), 8152);
}

#[test]
fn best_fit_reproduces_the_paper_within_a_point() {
    let m = mean_at_130(Kind::BestFit);
    assert!(
        (m - 93.1).abs() <= 1.0,
        "best-fit at 130%: {m:.2} (paper 93.1)"
    );
}

#[test]
fn fgd_reproduces_the_paper_within_a_point_and_fragments_least() {
    let (m, frag) = measures(Kind::Fgd);
    assert!((m - 95.4).abs() <= 1.0, "fgd at 130%: {m:.2} (paper 95.4)");
    // The paper's ordering of fragmentation at 80% arrived load.
    let (_, best_fit) = measures(Kind::BestFit);
    let (_, random) = measures(Kind::Random);
    assert!(
        frag < best_fit && best_fit < random,
        "fgd {frag:.1} < best-fit {best_fit:.1} < random {random:.1}"
    );
}
