//! gpusim's configuration: from an optional TOML file (`GPUSIM_CONFIG`), then
//! environment variables, which override the file. Parsed once per process.

use serde::Deserialize;
use std::path::PathBuf;

/// One simulated device. The defaults describe an H100 SXM5 80 GB.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    pub name: String,
    pub sms: u32,
    pub max_threads_per_sm: u32,
    pub max_blocks_per_sm: u32,
    pub registers_per_sm: u32,
    pub shared_memory_per_sm: u32,
    pub shared_memory_per_block_optin: u32,
    pub reserved_shared_memory_per_block: u32,
    pub memory_bytes: u64,
    pub clock_mhz: u32,
    pub memory_clock_mhz: u32,
    /// Device memory bandwidth a streaming kernel reaches on the whole
    /// device, GB/s.
    pub memory_gbps: f64,
    /// What one SM alone can draw, GB/s: a kernel on `n` SMs moves at most
    /// `n × sm_memory_gbps` (and never above `memory_gbps`).
    pub sm_memory_gbps: f64,
    pub tdp_watts: u32,
    pub idle_watts: u32,
    pub compute_capability: (u32, u32),
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            name: "NVIDIA H100 80GB HBM3 (gpusim)".into(),
            sms: 132,
            max_threads_per_sm: 2048,
            max_blocks_per_sm: 32,
            registers_per_sm: 65536,
            shared_memory_per_sm: 228 * 1024,
            shared_memory_per_block_optin: 227 * 1024,
            reserved_shared_memory_per_block: 1024,
            // What an H100 80GB HBM3 reports: 81559 MiB.
            memory_bytes: H100_MEMORY_BYTES,
            clock_mhz: 1980,
            memory_clock_mhz: 2619,
            // 80% of the datasheet's 3,350 GB/s, what streaming and decode
            // kernels reach (the figure `vagus serve`'s cost model uses).
            memory_gbps: 2680.0,
            // Little's law: 2,048 threads with one 8-byte load each in
            // flight, over HBM3's ~600-cycle load latency at 1,980 MHz
            // (303 ns): 54 GB/s an SM, so about 50 SMs (38%) draw the
            // whole bandwidth. Not yet calibrated on a GPU.
            sm_memory_gbps: 54.0,
            tdp_watts: 700,
            idle_watts: 70,
            compute_capability: (9, 0),
        }
    }
}

/// The whole simulation: its devices, how fast simulated time runs, and where
/// the state that all processes share lives.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub devices: Vec<DeviceConfig>,
    /// Wall-clock seconds per simulated second: 2.0 makes every kernel take
    /// twice as long as it would on the modelled GPU.
    pub time_scale: f64,
    /// Gap before each kernel starts on the device, in simulated ns (default
    /// 5 µs, as measured between dependent kernels on an H100).
    pub launch_overhead_ns: u64,
    /// Host↔device copy bandwidth in bytes per simulated second.
    pub pcie_bytes_per_s: u64,
    /// The shared state file.
    pub state_path: PathBuf,
    /// `cuLaunchKernel` returns at once without running anything: a driver
    /// with (almost) no launch cost, for measuring what an interposer adds.
    pub null_launch: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read gpusim config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gpusim config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}={value:?} is not valid: {why}")]
    Env {
        name: &'static str,
        value: String,
        why: String,
    },
    #[error("invalid gpusim configuration: {0}")]
    Invalid(String),
}

/// Total memory an H100 80GB HBM3 reports (81559 MiB).
pub const H100_MEMORY_BYTES: u64 = 81559 << 20;

/// Upper bounds of the shared state layout.
pub const MAX_DEVICES: usize = 16;
pub const MAX_SMS: usize = 256;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    device_count: Option<u32>,
    time_scale: Option<f64>,
    launch_overhead_ns: Option<u64>,
    pcie_gb_per_s: Option<f64>,
    state: Option<PathBuf>,
    null_launch: Option<bool>,
    device: Option<DeviceConfig>,
}

impl SimConfig {
    /// Reads `GPUSIM_CONFIG` (a TOML file), then the `GPUSIM_*` variables.
    pub fn from_env() -> Result<SimConfig, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`SimConfig::from_env`], reading variables through `var`.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<SimConfig, ConfigError> {
        let file = match var("GPUSIM_CONFIG") {
            Some(p) if !p.is_empty() => {
                let path = PathBuf::from(p);
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path,
                    message: e.to_string(),
                })?
            }
            _ => FileConfig::default(),
        };
        let mut dev = file.device.unwrap_or_default();
        let mut count = file.device_count.unwrap_or(1);
        let mut time_scale = file.time_scale.unwrap_or(1.0);
        let mut overhead = file.launch_overhead_ns.unwrap_or(5_000);
        let mut pcie = file.pcie_gb_per_s.unwrap_or(25.0);
        let mut state = file.state;

        fn num<T: std::str::FromStr>(
            var: &impl Fn(&str) -> Option<String>,
            name: &'static str,
        ) -> Result<Option<T>, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            match var(name) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<T>()
                    .map(Some)
                    .map_err(|e| ConfigError::Env {
                        name,
                        value: v.clone(),
                        why: e.to_string(),
                    }),
            }
        }
        if let Some(v) = num(&var, "GPUSIM_DEVICES")? {
            count = v;
        }
        if let Some(v) = var("GPUSIM_MODEL").filter(|v| !v.is_empty()) {
            dev.name = v;
        }
        if let Some(v) = num(&var, "GPUSIM_SMS")? {
            dev.sms = v;
        }
        if let Some(v) = num::<f64>(&var, "GPUSIM_MEMORY_GIB")? {
            if !(v.is_finite() && v > 0.0 && v < 1e6) {
                return Err(ConfigError::Env {
                    name: "GPUSIM_MEMORY_GIB",
                    value: v.to_string(),
                    why: "must be a positive number of GiB".into(),
                });
            }
            dev.memory_bytes = (v * (1u64 << 30) as f64) as u64;
        }
        if let Some(v) = num(&var, "GPUSIM_TDP_W")? {
            dev.tdp_watts = v;
        }
        if let Some(v) = num(&var, "GPUSIM_IDLE_W")? {
            dev.idle_watts = v;
        }
        if let Some(v) = num(&var, "GPUSIM_CLOCK_MHZ")? {
            dev.clock_mhz = v;
        }
        if let Some(v) = num(&var, "GPUSIM_MEMORY_GBPS")? {
            dev.memory_gbps = v;
        }
        if let Some(v) = num(&var, "GPUSIM_SM_MEMORY_GBPS")? {
            dev.sm_memory_gbps = v;
        }
        if let Some(v) = num(&var, "GPUSIM_TIME_SCALE")? {
            time_scale = v;
        }
        if let Some(v) = num(&var, "GPUSIM_LAUNCH_OVERHEAD_NS")? {
            overhead = v;
        }
        if let Some(v) = num(&var, "GPUSIM_PCIE_GB_PER_S")? {
            pcie = v;
        }
        if let Some(v) = var("GPUSIM_STATE").filter(|v| !v.is_empty()) {
            state = Some(PathBuf::from(v));
        }
        let null_launch = match var("GPUSIM_NULL_LAUNCH").as_deref().map(str::trim) {
            None | Some("") | Some("0") | Some("false") => file.null_launch.unwrap_or(false),
            Some("1") | Some("true") => true,
            Some(other) => {
                return Err(ConfigError::Env {
                    name: "GPUSIM_NULL_LAUNCH",
                    value: other.to_string(),
                    why: "expected 1, true, 0 or false".into(),
                });
            }
        };

        let mut cfg = SimConfig {
            devices: vec![dev; count as usize],
            time_scale,
            launch_overhead_ns: overhead,
            pcie_bytes_per_s: (pcie * 1e9) as u64,
            state_path: PathBuf::new(),
            null_launch,
        };
        cfg.validate()?;
        cfg.state_path = state.unwrap_or_else(|| cfg.default_state_path());
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.devices.is_empty() || self.devices.len() > MAX_DEVICES {
            return bad(format!(
                "device count {} is not in 1..={MAX_DEVICES}",
                self.devices.len()
            ));
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return bad(format!(
                "time_scale {} must be a positive number",
                self.time_scale
            ));
        }
        if self.pcie_bytes_per_s == 0 {
            return bad("pcie_gb_per_s must be positive".into());
        }
        for d in &self.devices {
            if d.sms == 0 || d.sms as usize > MAX_SMS {
                return bad(format!("sms {} is not in 1..={MAX_SMS}", d.sms));
            }
            if d.name.len() >= 96 {
                return bad(format!("device name {:?} is longer than 95 bytes", d.name));
            }
            if d.clock_mhz == 0 || d.max_threads_per_sm < 32 || d.max_blocks_per_sm == 0 {
                return bad(
                    "clock_mhz, max_threads_per_sm and max_blocks_per_sm must be positive".into(),
                );
            }
            if d.registers_per_sm < 256 || d.memory_bytes == 0 {
                return bad("registers_per_sm and memory must be positive".into());
            }
            for (what, v) in [
                ("memory_gbps", d.memory_gbps),
                ("sm_memory_gbps", d.sm_memory_gbps),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return bad(format!("{what} {v} must be a positive number"));
                }
            }
            if d.idle_watts > d.tdp_watts {
                return bad(format!(
                    "idle_watts {} exceeds tdp_watts {}",
                    d.idle_watts, d.tdp_watts
                ));
            }
        }
        Ok(())
    }

    /// `/dev/shm/gpusim-<uid>-<hash of the device set>.state`: processes with
    /// the same configuration share devices; a different one gets its own.
    pub fn default_state_path(&self) -> PathBuf {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in format!("{:?}{}", self.devices, self.time_scale).bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        };
        PathBuf::from(format!("{dir}/gpusim-{uid}-{:08x}.state", h as u32))
    }

    /// Converts simulated nanoseconds into wall-clock nanoseconds.
    pub fn wall_ns(&self, sim_ns: f64) -> u64 {
        (sim_ns * self.time_scale).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<SimConfig, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SimConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_are_one_h100() {
        let c = with(&[]).unwrap();
        assert_eq!(c.devices.len(), 1);
        assert_eq!(c.devices[0].sms, 132);
        assert_eq!(c.devices[0].memory_bytes, 81559 << 20);
    }

    #[test]
    fn env_overrides_and_bad_values_are_named() {
        let c = with(&[
            ("GPUSIM_DEVICES", "2"),
            ("GPUSIM_SMS", "16"),
            ("GPUSIM_TIME_SCALE", "0.5"),
        ])
        .unwrap();
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[1].sms, 16);
        assert_eq!(c.wall_ns(1000.0), 500);
        let e = with(&[("GPUSIM_SMS", "many")]).unwrap_err().to_string();
        assert!(e.contains("GPUSIM_SMS"), "{e}");
        let e = with(&[("GPUSIM_SMS", "0")]).unwrap_err().to_string();
        assert!(e.contains("sms 0"), "{e}");
        let c = with(&[
            ("GPUSIM_MEMORY_GBPS", "1000"),
            ("GPUSIM_SM_MEMORY_GBPS", "20"),
        ])
        .unwrap();
        assert_eq!(
            (c.devices[0].memory_gbps, c.devices[0].sm_memory_gbps),
            (1000.0, 20.0)
        );
        let e = with(&[("GPUSIM_MEMORY_GBPS", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory_gbps 0"), "{e}");
    }

    #[test]
    fn toml_file_is_read_and_env_wins() {
        let dir = std::env::temp_dir().join(format!("gpusim-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("g.toml");
        std::fs::write(
            &f,
            "device_count = 3\ntime_scale = 2.0\n[device]\nsms = 40\nname = \"Test GPU\"\n",
        )
        .unwrap();
        let c = with(&[("GPUSIM_CONFIG", f.to_str().unwrap()), ("GPUSIM_SMS", "20")]).unwrap();
        assert_eq!(c.devices.len(), 3);
        assert_eq!(c.devices[0].name, "Test GPU");
        assert_eq!(c.devices[0].sms, 20);
        assert_eq!(c.time_scale, 2.0);
        std::fs::write(&f, "[device]\nsmz = 40\n").unwrap();
        let e = with(&[("GPUSIM_CONFIG", f.to_str().unwrap())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("smz"), "{e}");
    }
}
