//! What one engine iteration costs on the GPU, from the model's size and
//! the device's peak figures (a roofline: prefill is compute-bound,
//! decode memory-bound). ARCHITECTURE.md gives the published figures the
//! defaults come from.
//!
//! - Prefill: `2 × params` FLOPs per prompt token (Kaplan et al. 2020),
//!   `params = model_gb × 10⁹ / 2` (16-bit weights), at `mfu` of the
//!   device's dense FP16 peak.
//! - Decode: every iteration reads the weights once (`model_gb` at
//!   `bandwidth_eff` of the HBM bandwidth) and, per running sequence, its
//!   KV cache (`kv_mib_per_token` × its context).
//!
//! One iteration's time is the weights' read (once, whatever it holds)
//! plus each decoding sequence's KV read plus its prefill tokens' compute.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CostModel {
    /// Model weights (GB, 16-bit).
    pub model_gb: f64,
    /// KV cache per token of context (MiB).
    pub kv_mib_per_token: f64,
    /// Dense FP16 peak (TFLOPS) and HBM bandwidth (GB/s) of the device.
    pub peak_tflops: f64,
    pub hbm_gbps: f64,
    /// Fraction of peak FLOPs a prefill reaches, and of peak bandwidth a
    /// decode step.
    pub mfu: f64,
    pub bandwidth_eff: f64,
}

impl CostModel {
    /// An H100 SXM (989 TFLOPS dense FP16, 3,350 GB/s) serving a model of
    /// `model_gb` with Llama-3-8B's KV cache per token (GQA: 8 KV heads ×
    /// 128 × 32 layers × K and V × 2 bytes = 128 KiB).
    pub fn h100(model_gb: f64) -> CostModel {
        CostModel {
            model_gb,
            kv_mib_per_token: 0.125,
            peak_tflops: 989.0,
            hbm_gbps: 3350.0,
            mfu: 0.5,
            bandwidth_eff: 0.8,
        }
    }

    /// Microseconds to prefill `tokens` prompt tokens.
    pub fn prefill_us(&self, tokens: u64) -> f64 {
        let params = self.model_gb * 1e9 / 2.0;
        2.0 * params * tokens as f64 / (self.peak_tflops * 1e12 * self.mfu) * 1e6
    }

    /// Microseconds to read the weights once.
    pub fn weights_us(&self) -> f64 {
        self.model_gb * 1e9 / (self.hbm_gbps * 1e9 * self.bandwidth_eff) * 1e6
    }

    /// Microseconds to read a sequence's KV cache of `context` tokens.
    pub fn kv_us(&self, context: u64) -> f64 {
        self.kv_mib_per_token * (1u64 << 20) as f64 * context as f64
            / (self.hbm_gbps * 1e9 * self.bandwidth_eff)
            * 1e6
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--model-gb", self.model_gb),
            ("--peak-tflops", self.peak_tflops),
            ("--hbm-gbps", self.hbm_gbps),
        ];
        for (flag, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{flag} {v}: must be a number above 0"));
            }
        }
        if !(self.kv_mib_per_token.is_finite() && self.kv_mib_per_token >= 0.0) {
            return Err(format!(
                "--kv-mib-per-token {}: must be a number ≥ 0",
                self.kv_mib_per_token
            ));
        }
        for (flag, v) in [("--mfu", self.mfu), ("--bandwidth-eff", self.bandwidth_eff)] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(format!("{flag} {v}: must be above 0 and at most 1"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_8b_model_on_an_h100() {
        let c = CostModel::h100(16.0);
        // 16 GB at 80% of 3,350 GB/s: 5.97 ms a step (published TPOT for
        // Llama-3-8B on an H100 at small batches is 6–8 ms).
        assert!((c.weights_us() - 5970.0).abs() < 10.0, "{}", c.weights_us());
        // 1,000 prompt tokens: 16 TFLOP at 495 TFLOPS, 32 ms.
        assert!(
            (c.prefill_us(1000) - 32_356.0).abs() < 50.0,
            "{}",
            c.prefill_us(1000)
        );
        // A 1,000-token context: 125 MiB of KV, 49 µs.
        assert!((c.kv_us(1000) - 48.9).abs() < 0.5, "{}", c.kv_us(1000));
    }
}
