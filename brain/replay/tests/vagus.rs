//! The vagus policy against FGD on the openb trace (`../shared/data/openb/`,
//! or `VAGUS_OPENB_DIR`): seeds 42–51, allocation at 130% arrived load.

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

fn mean_at_130(kind: Kind, pods: &str) -> f64 {
    let d = data_dir();
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let nodes = openb::nodes("nodes", &read("openb_node_list_gpu_node.csv")).unwrap();
    let pods = openb::pods(pods, &read(pods)).unwrap();
    let seeds: Vec<u64> = (42..52).collect();
    let runs = replay_seeds(&nodes, &pods, kind, &seeds, 2, &|_| {});
    mean_curve(&runs, |r| &r.allocation)[130]
}

#[test]
fn vagus_beats_fgd_by_half_a_point_on_the_default_trace() {
    let trace = "openb_pod_list_default.csv";
    let (vagus, fgd) = (
        mean_at_130(Kind::Vagus, trace),
        mean_at_130(Kind::Fgd, trace),
    );
    assert!(
        vagus >= fgd + 0.5,
        "vagus {vagus:.2} vs fgd {fgd:.2} at 130% arrived load"
    );
}

#[test]
fn vagus_beats_fgd_by_half_a_point_on_the_gpushare40_trace() {
    let trace = "openb_pod_list_gpushare40.csv";
    let (vagus, fgd) = (
        mean_at_130(Kind::Vagus, trace),
        mean_at_130(Kind::Fgd, trace),
    );
    assert!(
        vagus >= fgd + 0.5,
        "vagus {vagus:.3} vs fgd {fgd:.3} at 130% arrived load"
    );
}
