//! What the brain knows of each GPU model: dense FP16 tensor throughput,
//! board power, SMs, memory, the price it charges per GPU-hour, and the
//! `nvidia.com/gpu.product` label GPU feature discovery gives it.
//!
//! Names match by family: an accepted or preferred model `A100` matches
//! `NVIDIA A100-SXM4-80GB`; the Alibaba trace's names (`T4`, `V100M16`,
//! `G2`, …) are families of their own.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuModel {
    /// Family, matched case-insensitively inside a GPU's name.
    pub family: &'static str,
    /// Dense FP16/BF16 tensor TFLOPS.
    pub tflops: f64,
    pub tdp_w: f64,
    pub sms: u32,
    pub memory_gb: f64,
    /// Price of one GPU-hour (cost limits are checked against it).
    pub price_per_hour: f64,
}

impl GpuModel {
    pub fn tflops_per_watt(&self) -> f64 {
        self.tflops / self.tdp_w
    }
}

/// Longest families first, so `H100` does not claim an `H100 NVL` entry
/// that has its own row, and `V100M32` wins over `V100`.
pub const TABLE: &[GpuModel] = &[
    m("V100M32", 125.0, 300.0, 80, 32.0, 2.48),
    m("V100M16", 125.0, 300.0, 80, 16.0, 2.48),
    m("H200", 989.0, 700.0, 132, 141.0, 10.60),
    m("H100", 989.0, 700.0, 132, 80.0, 9.80),
    m("A100", 312.0, 400.0, 108, 80.0, 4.10),
    m("L40S", 362.0, 350.0, 142, 48.0, 2.00),
    m("A10", 125.0, 150.0, 72, 24.0, 1.10),
    m("L4", 121.0, 72.0, 58, 24.0, 0.80),
    m("T4", 65.0, 70.0, 40, 16.0, 0.53),
    m("V100", 125.0, 300.0, 80, 16.0, 2.48),
    m("P100", 18.7, 250.0, 56, 16.0, 1.46),
    // The Alibaba trace's anonymised models (treated as T4- and V100-class).
    m("G2", 65.0, 70.0, 40, 16.0, 0.53),
    m("G3", 125.0, 300.0, 80, 32.0, 2.48),
];

const fn m(
    family: &'static str,
    tflops: f64,
    tdp_w: f64,
    sms: u32,
    memory_gb: f64,
    price_per_hour: f64,
) -> GpuModel {
    GpuModel {
        family,
        tflops,
        tdp_w,
        sms,
        memory_gb,
        price_per_hour,
    }
}

/// Whether the GPU named `name` belongs to `family` (`A100` matches
/// `NVIDIA A100-SXM4-80GB`, not `A1000`).
pub fn is_family(name: &str, family: &str) -> bool {
    let (n, f) = (name.as_bytes(), family.as_bytes());
    if f.is_empty() || f.len() > n.len() {
        return false;
    }
    (0..=n.len() - f.len()).any(|at| {
        let end = at + f.len();
        n[at..end].eq_ignore_ascii_case(f)
            && (at == 0 || !n[at - 1].is_ascii_alphanumeric())
            && (end == n.len() || !n[end].is_ascii_digit())
    })
}

/// The table's row for the GPU named `name`, if any.
pub fn lookup(name: &str) -> Option<&'static GpuModel> {
    TABLE.iter().find(|m| is_family(name, m.family))
}

/// The table's families, for messages (`V100M32, V100M16, H200, …`).
pub fn families() -> String {
    TABLE
        .iter()
        .map(|m| m.family)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The best TFLOPS/W in the table: efficiency is scored against it.
pub fn best_tflops_per_watt() -> f64 {
    TABLE
        .iter()
        .map(GpuModel::tflops_per_watt)
        .fold(0.0, f64::max)
}

/// The `nvidia.com/gpu.product` label of a GPU named `name`, as GPU feature
/// discovery writes it (spaces become dashes).
pub fn product_label(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_match_whole_names_only() {
        assert!(is_family("NVIDIA A100-SXM4-80GB", "A100"));
        assert!(is_family("NVIDIA H100 80GB HBM3", "h100"));
        assert!(!is_family("NVIDIA RTX A1000", "A100"));
        assert!(!is_family("NVIDIA A10G", "A100"));
        assert!(is_family("T4", "T4"));
        assert_eq!(lookup("NVIDIA H100 80GB HBM3").unwrap().family, "H100");
        assert_eq!(lookup("V100M32").unwrap().memory_gb, 32.0);
        assert_eq!(lookup("NVIDIA A10").unwrap().family, "A10");
        assert!(lookup("Quadro K600").is_none());
        assert_eq!(
            product_label("NVIDIA H100 80GB HBM3"),
            "NVIDIA-H100-80GB-HBM3"
        );
    }
}
