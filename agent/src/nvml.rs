//! The devices as NVML sees them (nvml-wrapper; gpusim's `libnvidia-ml`
//! where there is no GPU): utilisation, memory, power, energy, clocks,
//! temperature, and which processes use each device and how much.
//!
//! A field NVML cannot give (not supported on this device, or by gpusim)
//! is `None`; one bad field never loses the others.

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use std::collections::BTreeMap;
use vagus_proto::wire::GpuInfo;

/// One device at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    /// Percent of the last sample period a kernel ran (NVML's "gpu" utilisation).
    pub utilization_pct: Option<u32>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub power_mw: Option<u32>,
    pub power_limit_mw: Option<u32>,
    /// Since the driver loaded, millijoules.
    pub energy_mj: Option<u64>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    pub temperature_c: Option<u32>,
    /// Processes with a context on the device, and their device memory.
    pub processes: BTreeMap<u32, Option<u64>>,
    /// Recent per-process SM utilisation, percent.
    pub process_sm_pct: BTreeMap<u32, u32>,
}

/// The NVML library and its devices.
pub struct Gpus {
    nvml: Nvml,
    /// NVML's last-seen timestamp per device for process utilisation.
    last_util_us: std::cell::RefCell<BTreeMap<u32, u64>>,
}

impl Gpus {
    /// Loads NVML (`libnvidia-ml.so.1` wherever the loader finds it).
    pub fn init() -> Result<Gpus, String> {
        let nvml = Nvml::builder()
            .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
            .init()
            .map_err(|e| format!("NVML: {e}"))?;
        Ok(Gpus {
            nvml,
            last_util_us: Default::default(),
        })
    }

    pub fn count(&self) -> u32 {
        self.nvml.device_count().unwrap_or(0)
    }

    /// What the brain's `Hello` announces.
    pub fn inventory(&self) -> Vec<GpuInfo> {
        (0..self.count())
            .filter_map(|i| {
                let d = self.nvml.device_by_index(i).ok()?;
                Some(GpuInfo {
                    index: i,
                    uuid: d.uuid().unwrap_or_default(),
                    model: d.name().unwrap_or_default(),
                    sms: d.attributes().map(|a| a.multiprocessor_count).unwrap_or(0),
                    memory_bytes: d.memory_info().map(|m| m.total).unwrap_or(0),
                    tdp_watts: d
                        .power_management_limit_default()
                        .map(|mw| mw / 1000)
                        .unwrap_or(0),
                    mps: None,
                })
            })
            .collect()
    }

    /// Every device now.
    pub fn sample(&self) -> Vec<GpuSample> {
        (0..self.count())
            .filter_map(|i| {
                let d = self.nvml.device_by_index(i).ok()?;
                let memory = d.memory_info().ok();
                let mut s = GpuSample {
                    index: i,
                    uuid: d.uuid().unwrap_or_default(),
                    model: d.name().unwrap_or_default(),
                    utilization_pct: d.utilization_rates().ok().map(|u| u.gpu),
                    memory_total_bytes: memory.as_ref().map(|m| m.total),
                    memory_used_bytes: memory.as_ref().map(|m| m.used),
                    power_mw: d.power_usage().ok(),
                    power_limit_mw: d.enforced_power_limit().ok(),
                    energy_mj: d.total_energy_consumption().ok(),
                    sm_clock_mhz: d.clock_info(Clock::SM).ok(),
                    mem_clock_mhz: d.clock_info(Clock::Memory).ok(),
                    temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
                    ..GpuSample::default()
                };
                for p in d.running_compute_processes().unwrap_or_default() {
                    let mem = match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    };
                    s.processes.insert(p.pid, mem);
                }
                let since = self.last_util_us.borrow().get(&i).copied().unwrap_or(0);
                if let Ok(samples) = d.process_utilization_stats(since) {
                    let mut newest = since;
                    for u in samples {
                        newest = newest.max(u.timestamp);
                        s.process_sm_pct.insert(u.pid, u.sm_util);
                    }
                    self.last_util_us.borrow_mut().insert(i, newest);
                }
                Some(s)
            })
            .collect()
    }
}

/// An XID error NVML reported: a device fault (79: fallen off the bus, 48:
/// double-bit ECC error, 13/31/43: a process's fault, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Xid {
    pub gpu: u32,
    pub xid: u64,
}

/// Watches every device for XID errors on a thread of its own (NVML's event
/// wait blocks), appending them to `sink`. Errs, saying why, where NVML
/// offers no XID events.
pub fn watch_xids(
    sink: std::sync::Arc<std::sync::Mutex<Vec<Xid>>>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let handle = std::thread::Builder::new()
        .name("vagus-xid".into())
        .spawn(move || {
            let nvml = match Nvml::builder()
                .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
                .init()
            {
                Ok(n) => n,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("NVML: {e}")));
                    return;
                }
            };
            let mut set = match nvml.create_event_set() {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("NVML event sets: {e}")));
                    return;
                }
            };
            let mut registered = 0;
            for i in 0..nvml.device_count().unwrap_or(0) {
                let Ok(d) = nvml.device_by_index(i) else {
                    continue;
                };
                let supported = d
                    .supported_event_types()
                    .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
                if !supported {
                    continue;
                }
                set = match d.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(s) => {
                        registered += 1;
                        s
                    }
                    // NVML releases the set when registration fails.
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("NVML event registration: {}", e.error)));
                        return;
                    }
                };
            }
            if registered == 0 {
                let _ = ready_tx.send(Err("no device reports XID events".into()));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            loop {
                match set.wait(500) {
                    Ok(ev) => {
                        use nvml_wrapper::enums::event::XidError;
                        if let (Ok(gpu), Some(XidError::Value(xid))) =
                            (ev.device.index(), ev.event_data)
                        {
                            sink.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(Xid { gpu, xid });
                        }
                    }
                    Err(NvmlError::Timeout) => {}
                    // Anything else: back off rather than spin.
                    Err(_) => std::thread::sleep(std::time::Duration::from_secs(1)),
                }
            }
        })
        .map_err(|e| format!("cannot start the XID thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(why)) => Err(why),
        Err(_) => Err("the XID thread ended".into()),
    }
}
