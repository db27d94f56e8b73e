//! The driver's process-local object model: contexts, modules, functions,
//! streams, events, graphs and allocations, all behind opaque handles that are
//! checked on every use, so a stale or made-up handle is an error code, never
//! a crash. Timing goes through the shared device state (`gpusim::state`).

use crate::result::*;
use gpusim::clock::now_ns;
use gpusim::mps;
use gpusim::occupancy::{self, BlockDemand};
use gpusim::ptx::{self, BlockCost, MemoryCost};
use gpusim::state::SharedState;
use gpusim::{DeviceConfig, SimConfig};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Handle kinds live in the top 16 bits of a handle so that handles of one
/// kind are never mistaken for another, and ids are never reused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum Kind {
    Ctx = 0x0c7c,
    Module = 0x0d0d,
    Func = 0x0f0f,
    Stream = 0x05e5,
    Event = 0x0e0e,
    Graph = 0x06a6,
    GraphExec = 0x06e6,
    /// A VMM physical allocation (`cuMemCreate`).
    Physical = 0x0a11,
}

pub fn handle(kind: Kind, id: u64) -> u64 {
    ((kind as u64) << 48) | id
}

/// The id inside a handle of `kind`, if it is one.
pub fn id_of(kind: Kind, h: u64) -> Option<u64> {
    (h >> 48 == kind as u64).then_some(h & 0xffff_ffff_ffff)
}

pub const CU_STREAM_LEGACY: u64 = 0x1;
pub const CU_STREAM_PER_THREAD: u64 = 0x2;
pub const CU_STREAM_NON_BLOCKING: u32 = 0x1;
pub const CU_EVENT_DISABLE_TIMING: u32 = 0x2;
pub const CU_STREAM_CAPTURE_MODE_GLOBAL: u32 = 0;

pub struct Ctx {
    pub device: usize,
    pub flags: u32,
    /// The context's NULL (legacy default) stream: when its last work ends.
    pub null_tail: u64,
    pub primary: bool,
}

pub struct Function {
    pub ctx: u64,
    pub kernel: ptx::Kernel,
    pub name: CString,
    pub max_dynamic_smem: u32,
}

pub struct Stream {
    pub ctx: u64,
    pub flags: u32,
    pub priority: i32,
    pub tail: u64,
    pub capture: Option<Capture>,
}

#[derive(Default)]
pub struct Capture {
    pub mode: u32,
    pub nodes: Vec<Node>,
    pub invalidated: bool,
}

/// One operation recorded by stream capture, resolved at capture time.
#[derive(Clone)]
pub enum Node {
    Kernel(Launch),
    EventRecord(u64),
}

/// A kernel launch, validated and costed, ready to place.
#[derive(Clone, Copy)]
pub struct Launch {
    pub device: usize,
    pub blocks: u64,
    pub blocks_per_sm: u32,
    /// Simulated ns one block runs.
    pub block_ns: u64,
    /// Bytes of device memory the kernel moves.
    pub bytes: u64,
}

pub struct Event {
    pub ctx: u64,
    pub flags: u32,
    /// When the work before the record completes.
    pub at: Option<u64>,
}

pub struct Allocation {
    pub ctx: u64,
    pub device: usize,
    pub size: usize,
}

/// A VMM physical allocation: device memory accounted from `cuMemCreate`
/// until it is released and no longer mapped, backed by a memory file so
/// every mapping of it shares its bytes.
pub struct Physical {
    pub device: usize,
    pub size: usize,
    pub file: std::os::fd::OwnedFd,
    pub mappings: u32,
    pub released: bool,
}

/// A range of reserved address space mapped to (part of) a physical
/// allocation (`cuMemMap`); accessible once `cuMemSetAccess` says so.
pub struct Mapping {
    pub size: usize,
    pub handle: u64,
    pub accessible: bool,
}

/// What a process is on a device: its slot in the shared state and its SM share.
#[derive(Clone, Copy)]
pub struct Attachment {
    pub slot: Option<usize>,
    pub percent: f64,
    pub allowed_sms: u32,
    pub mps_server: u32,
}

pub struct PrimaryCtx {
    pub handle: u64,
    pub refs: u32,
    pub flags: u32,
}

#[derive(Default)]
pub struct Objects {
    next: u64,
    pub ctxs: HashMap<u64, Ctx>,
    /// Module id → (its context, its functions' ids).
    pub modules: HashMap<u64, (u64, Vec<u64>)>,
    pub funcs: HashMap<u64, Function>,
    pub streams: HashMap<u64, Stream>,
    pub events: HashMap<u64, Event>,
    pub graphs: HashMap<u64, Vec<Node>>,
    pub execs: HashMap<u64, Vec<Node>>,
    pub allocs: BTreeMap<u64, Allocation>,
    /// Page-locked host allocations (`cuMemHostAlloc`): address → size.
    pub host_allocs: HashMap<u64, usize>,
    /// Virtual memory management: physical allocations by handle, reserved
    /// address ranges (base → size) and the mappings in them (by address).
    pub physical: HashMap<u64, Physical>,
    pub reserved: BTreeMap<u64, usize>,
    pub mapped: BTreeMap<u64, Mapping>,
    pub primary: HashMap<usize, PrimaryCtx>,
    pub attached: HashMap<usize, Attachment>,
}

impl Objects {
    pub fn fresh(&mut self, kind: Kind) -> u64 {
        self.next += 1;
        handle(kind, self.next)
    }
}

pub struct Driver {
    pub cfg: SimConfig,
    pub state: SharedState,
    /// The devices this process sees (`CUDA_VISIBLE_DEVICES`), in ordinal
    /// order, each with its index in the state file. A `CUdevice` handle
    /// is that index, so everything past `cuDeviceGet` works on the
    /// physical device.
    pub devices: Vec<(usize, DeviceConfig)>,
    pub objects: Mutex<Objects>,
}

static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();

thread_local! {
    /// This thread's context stack; the top is the current context.
    pub static CTX_STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Initialises the driver (cuInit).
pub fn init() -> CUresult {
    match DRIVER.get_or_init(|| {
        let r = SimConfig::from_env()
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                let state = SharedState::open(&cfg).map_err(|e| e.to_string())?;
                let uuids: Vec<String> = (0..state.device_count())
                    .filter_map(|i| state.device(i))
                    .map(|d| d.uuid_string())
                    .collect();
                let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
                let devices = visible_devices(visible.as_deref(), &uuids)
                    .into_iter()
                    .filter_map(|i| state.device(i).map(|d| (i, d.config())))
                    .collect();
                crate::NULL_LAUNCH.store(cfg.null_launch, std::sync::atomic::Ordering::Relaxed);
                Ok(Driver {
                    cfg,
                    state,
                    devices,
                    objects: Mutex::new(Objects::default()),
                })
            });
        if let Err(e) = &r {
            eprintln!("gpusim: cuInit failed: {e}");
        }
        r
    }) {
        Ok(_) => CUDA_SUCCESS,
        Err(_) => CUDA_ERROR_NO_DEVICE,
    }
}

/// The initialised driver, or `CUDA_ERROR_NOT_INITIALIZED`.
pub fn driver() -> Result<&'static Driver, CUresult> {
    match DRIVER.get() {
        Some(Ok(d)) => Ok(d),
        _ => Err(CUDA_ERROR_NOT_INITIALIZED),
    }
}

impl Driver {
    pub fn lock(&self) -> MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device of a `CUdevice` handle (its state-file index), if this
    /// process sees it.
    pub fn device(&self, dev: i32) -> Result<&DeviceConfig, CUresult> {
        usize::try_from(dev)
            .ok()
            .and_then(|i| self.devices.iter().find(|(p, _)| *p == i))
            .map(|(_, d)| d)
            .ok_or(CUDA_ERROR_INVALID_DEVICE)
    }

    /// The handle of the `ordinal`-th visible device.
    pub fn handle(&self, ordinal: i32) -> Result<i32, CUresult> {
        usize::try_from(ordinal)
            .ok()
            .and_then(|i| self.devices.get(i))
            .map(|(p, _)| *p as i32)
            .ok_or(CUDA_ERROR_INVALID_DEVICE)
    }

    /// The calling thread's current context, checked to be alive.
    pub fn current(&self, o: &Objects) -> Result<u64, CUresult> {
        let top = CTX_STACK.with(|s| s.borrow().last().copied());
        match top {
            Some(h) if o.ctxs.contains_key(&h) => Ok(h),
            _ => Err(CUDA_ERROR_INVALID_CONTEXT),
        }
    }

    pub fn wall(&self, sim_ns: f64) -> u64 {
        self.cfg.wall_ns(sim_ns)
    }

    /// This process's SM share on `device`, decided once, the first time the
    /// process asks: from the MPS control daemon if one runs, else from
    /// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`, else all SMs.
    pub fn attachment(&self, o: &mut Objects, device: usize) -> Attachment {
        if let Some(a) = o.attached.get(&device) {
            return *a;
        }
        let env = std::env::var("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
            .ok()
            .and_then(|v| match mps::parse_percent(&v) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("gpusim: ignoring CUDA_MPS_ACTIVE_THREAD_PERCENTAGE: {e}");
                    None
                }
            });
        let pid = std::process::id();
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let (percent, server) = match mps::connect_client(pid, uid, env) {
            Some(Ok(g)) => (g.percent, g.server_pid),
            Some(Err(e)) => {
                eprintln!("gpusim: MPS control daemon refused this client: {e}");
                (env.unwrap_or(100.0), 0)
            }
            None => (env.unwrap_or(100.0), 0),
        };
        // Only visible devices get contexts, so the device is one of them.
        let sms = self.device(device as i32).map_or(0, |d| d.sms);
        let a = Attachment {
            slot: None,
            percent,
            allowed_sms: mps::sms_for_percent(sms, percent),
            mps_server: server,
        };
        o.attached.insert(device, a);
        a
    }

    /// Registers this process on `device` in the shared state (at its first
    /// context there), so NVML lists it.
    pub fn register(&self, o: &mut Objects, device: usize) -> Result<usize, CUresult> {
        let mut a = self.attachment(o, device);
        if let Some(s) = a.slot {
            return Ok(s);
        }
        let slot = self
            .state
            .register_process(
                device,
                std::process::id(),
                a.percent.round() as u32,
                a.mps_server,
            )
            .map_err(|e| {
                eprintln!("gpusim: {e}");
                CUDA_ERROR_OUT_OF_MEMORY
            })?;
        a.slot = Some(slot);
        o.attached.insert(device, a);
        register_exit_hook();
        Ok(slot)
    }

    pub fn new_context(
        &self,
        o: &mut Objects,
        device: usize,
        flags: u32,
        primary: bool,
    ) -> Result<u64, CUresult> {
        self.register(o, device)?;
        let h = o.fresh(Kind::Ctx);
        o.ctxs.insert(
            h,
            Ctx {
                device,
                flags,
                null_tail: 0,
                primary,
            },
        );
        Ok(h)
    }

    /// Frees everything a context owns.
    pub fn destroy_context(&self, o: &mut Objects, ctx: u64) {
        let Some(c) = o.ctxs.remove(&ctx) else { return };
        o.modules.retain(|_, m| m.0 != ctx);
        o.funcs.retain(|_, f| f.ctx != ctx);
        o.streams.retain(|_, s| s.ctx != ctx);
        o.events.retain(|_, e| e.ctx != ctx);
        let dead: Vec<u64> = o
            .allocs
            .iter()
            .filter(|(_, a)| a.ctx == ctx)
            .map(|(p, _)| *p)
            .collect();
        for p in dead {
            self.free_allocation(o, p);
        }
        let _ = c;
        CTX_STACK.with(|s| s.borrow_mut().retain(|&h| h != ctx));
    }

    pub fn free_allocation(&self, o: &mut Objects, ptr: u64) -> bool {
        let Some(a) = o.allocs.remove(&ptr) else {
            return false;
        };
        // SAFETY: unmapping a region this driver mapped for the allocation.
        unsafe { libc::munmap(ptr as *mut libc::c_void, a.size.max(1)) };
        let slot = o.attached.get(&a.device).and_then(|x| x.slot).unwrap_or(0);
        if let Some(d) = self.state.device(a.device) {
            d.free(slot, a.size as u64);
        }
        true
    }

    /// Gives a physical allocation's memory back to its device.
    pub fn free_physical(&self, o: &mut Objects, handle: u64) {
        let Some(p) = o.physical.remove(&handle) else {
            return;
        };
        let slot = o.attached.get(&p.device).and_then(|x| x.slot).unwrap_or(0);
        if let Some(d) = self.state.device(p.device) {
            d.free(slot, p.size as u64);
        }
    }

    /// Checks that `[ptr, ptr+len)` lies inside one device allocation, or
    /// in accessible mappings that follow each other without a gap; the
    /// device it is on.
    pub fn check_device_range(&self, o: &Objects, ptr: u64, len: usize) -> Result<usize, CUresult> {
        let end = ptr
            .checked_add(len as u64)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if let Some((base, a)) = o.allocs.range(..=ptr).next_back()
            && end <= base + a.size as u64
        {
            return Ok(a.device);
        }
        let (&first, m) = o
            .mapped
            .range(..=ptr)
            .next_back()
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let device = o.physical.get(&m.handle).map_or(0, |p| p.device);
        let mut covered = first;
        for (&at, m) in o.mapped.range(first..) {
            if at != covered || !m.accessible {
                break;
            }
            covered = at + m.size as u64;
            if covered >= end {
                return Ok(device);
            }
        }
        Err(CUDA_ERROR_INVALID_VALUE)
    }

    /// Resolves a stream handle (NULL, legacy, per-thread or created) to the
    /// stream's id in `o.streams`, or `None` for the context's NULL stream.
    pub fn stream(&self, o: &Objects, h: u64) -> Result<(u64, Option<u64>), CUresult> {
        if h == 0 || h == CU_STREAM_LEGACY || h == CU_STREAM_PER_THREAD {
            return Ok((self.current(o)?, None));
        }
        let id = id_of(Kind::Stream, h).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let s = o.streams.get(&id).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        if !o.ctxs.contains_key(&s.ctx) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        Ok((s.ctx, Some(id)))
    }

    /// When work enqueued now on `stream` may start: after the stream's own
    /// work and, under legacy default-stream rules, after the NULL stream's
    /// (for blocking streams) or after every blocking stream (for NULL).
    pub fn stream_ready(&self, o: &Objects, ctx: u64, stream: Option<u64>) -> u64 {
        let c = &o.ctxs[&ctx];
        match stream {
            Some(id) => {
                let s = &o.streams[&id];
                if s.flags & CU_STREAM_NON_BLOCKING != 0 {
                    s.tail
                } else {
                    s.tail.max(c.null_tail)
                }
            }
            None => o
                .streams
                .values()
                .filter(|s| s.ctx == ctx && s.flags & CU_STREAM_NON_BLOCKING == 0)
                .map(|s| s.tail)
                .fold(c.null_tail, u64::max),
        }
    }

    pub fn set_tail(&self, o: &mut Objects, ctx: u64, stream: Option<u64>, t: u64) {
        match stream {
            Some(id) => o.streams.get_mut(&id).expect("checked stream").tail = t,
            None => o.ctxs.get_mut(&ctx).expect("checked ctx").null_tail = t,
        }
    }

    /// The active capture on `stream`, if it is capturing.
    pub fn capture<'a>(&self, o: &'a mut Objects, stream: Option<u64>) -> Option<&'a mut Capture> {
        stream
            .and_then(|id| o.streams.get_mut(&id))
            .and_then(|s| s.capture.as_mut())
    }

    /// True if some stream of this process captures in global mode: then
    /// synchronising calls from any thread are illegal and invalidate it.
    pub fn invalidate_global_captures(&self, o: &mut Objects) -> bool {
        let mut any = false;
        for s in o.streams.values_mut() {
            if let Some(c) = s.capture.as_mut()
                && c.mode == CU_STREAM_CAPTURE_MODE_GLOBAL
            {
                c.invalidated = true;
                any = true;
            }
        }
        any
    }

    /// Validates a launch of `func` and works out what it costs.
    pub fn prepare_launch(
        &self,
        o: &Objects,
        func: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        params: *mut *mut libc::c_void,
        extra: *mut *mut libc::c_void,
    ) -> Result<(u64, Launch), CUresult> {
        let fid = id_of(Kind::Func, func).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let f = o.funcs.get(&fid).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let cur = self.current(o)?;
        if o.ctxs[&cur].device != o.ctxs.get(&f.ctx).ok_or(CUDA_ERROR_INVALID_CONTEXT)?.device {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let dev = self.device(o.ctxs[&f.ctx].device as i32)?;
        if grid.contains(&0) || block.contains(&0) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if grid[0] > i32::MAX as u32 || grid[1] > 65535 || grid[2] > 65535 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if block[0] > 1024 || block[1] > 1024 || block[2] > 64 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let threads = block[0] as u64 * block[1] as u64 * block[2] as u64;
        if threads > occupancy::MAX_THREADS_PER_BLOCK as u64 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let k = &f.kernel;
        // Beyond the kernel's declared bounds the launch is invalid (seen on
        // NVIDIA's driver); beyond what its registers allow it is out of
        // resources.
        if k.reqntid.is_some_and(|r| r as u64 != threads)
            || k.maxntid.is_some_and(|m| threads > m as u64)
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if threads > occupancy::max_threads_per_block(dev, k.regs, k.maxntid) as u64 {
            return Err(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
        }
        if shared_bytes > f.max_dynamic_smem
            || k.static_smem + shared_bytes > dev.shared_memory_per_block_optin
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let demand = BlockDemand {
            threads: threads as u32,
            regs_per_thread: k.regs,
            shared_bytes: k.static_smem + shared_bytes,
        };
        let occ = occupancy::blocks_per_sm(dev, demand);
        if occ.blocks_per_sm == 0 {
            return Err(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
        }
        let block_ns = match k.cost {
            BlockCost::Ns(ns) => ns,
            BlockCost::Cycles(c) => c * 1000 / dev.clock_mhz as u64,
            BlockCost::CyclesParam(i) => {
                read_int_param(k, i, params, extra)? * 1000 / dev.clock_mhz as u64
            }
        };
        let bytes = match k.memory {
            None => 0,
            Some(MemoryCost::Bytes(b)) => b,
            Some(MemoryCost::BytesParam(i)) => read_int_param(k, i, params, extra)?,
        };
        if k.params_size > 0 && params.is_null() && extra.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let blocks = grid[0] as u64 * grid[1] as u64 * grid[2] as u64;
        Ok((
            cur,
            Launch {
                device: o.ctxs[&f.ctx].device,
                blocks,
                blocks_per_sm: occ.blocks_per_sm,
                block_ns,
                bytes,
            },
        ))
    }

    /// Places a prepared launch on the device after `ready`; returns its end.
    pub fn run_launch(&self, o: &mut Objects, l: &Launch, ready: u64) -> u64 {
        let a = self.attachment(o, l.device);
        let slot = a.slot.unwrap_or(0);
        // Each kernel pays the launch overhead, also back to back on a stream
        // (an H100 showed ~5 µs between dependent kernels).
        let t0 = ready.max(now_ns()) + self.wall(self.cfg.launch_overhead_ns as f64);
        let waves = l.blocks.div_ceil(l.blocks_per_sm as u64);
        let p = self.state.place_kernel(
            l.device,
            slot,
            t0,
            waves,
            self.wall(l.block_ns as f64),
            a.allowed_sms,
            l.bytes,
            self.cfg.time_scale * 1e9,
        );
        p.end_ns
    }

    /// Runs captured nodes on a stream in order; returns the new tail.
    pub fn run_nodes(&self, o: &mut Objects, ctx: u64, stream: Option<u64>, nodes: &[Node]) -> u64 {
        let mut t = self.stream_ready(o, ctx, stream);
        for n in nodes {
            match n {
                Node::Kernel(l) => t = self.run_launch(o, l, t),
                Node::EventRecord(e) => {
                    if let Some(ev) = o.events.get_mut(e) {
                        ev.at = Some(t.max(now_ns()));
                    }
                }
            }
        }
        self.set_tail(o, ctx, stream, t);
        t
    }
}

/// Reads integer kernel parameter `i`, from `kernelParams` or from the packed
/// buffer passed with `CU_LAUNCH_PARAM_BUFFER_POINTER` in `extra`.
fn read_int_param(
    k: &ptx::Kernel,
    i: usize,
    params: *mut *mut libc::c_void,
    extra: *mut *mut libc::c_void,
) -> Result<u64, CUresult> {
    let p = k.params.get(i).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let src: *const u8 = if !params.is_null() {
        // SAFETY: the caller passes one pointer per declared parameter.
        unsafe { *params.add(i) as *const u8 }
    } else if !extra.is_null() {
        let (buf, size) = packed_buffer(extra)?;
        if p.offset + p.size > size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: offset checked against the buffer size the caller gave.
        unsafe { buf.add(p.offset) }
    } else {
        return Err(CUDA_ERROR_INVALID_VALUE);
    };
    if src.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut raw = [0u8; 8];
    // SAFETY: the parameter is p.size (1..=8) readable bytes at src.
    unsafe { std::ptr::copy_nonoverlapping(src, raw.as_mut_ptr(), p.size.min(8)) };
    let v = u64::from_le_bytes(raw);
    let v = if p.signed {
        let shift = 64 - 8 * p.size as u32;
        (((v << shift) as i64) >> shift).max(0) as u64
    } else {
        v
    };
    Ok(v)
}

const CU_LAUNCH_PARAM_END: usize = 0;
const CU_LAUNCH_PARAM_BUFFER_POINTER: usize = 1;
const CU_LAUNCH_PARAM_BUFFER_SIZE: usize = 2;

fn packed_buffer(extra: *mut *mut libc::c_void) -> Result<(*const u8, usize), CUresult> {
    let (mut buf, mut size) = (std::ptr::null::<u8>(), None);
    for i in (0..64).step_by(2) {
        // SAFETY: `extra` is a CU_LAUNCH_PARAM_END-terminated key/value list.
        let key = unsafe { *extra.add(i) } as usize;
        if key == CU_LAUNCH_PARAM_END {
            break;
        }
        // SAFETY: as above; every key has a value.
        let val = unsafe { *extra.add(i + 1) };
        match key {
            CU_LAUNCH_PARAM_BUFFER_POINTER => buf = val as *const u8,
            // SAFETY: the value of BUFFER_SIZE points at a size_t.
            CU_LAUNCH_PARAM_BUFFER_SIZE if !val.is_null() => {
                size = Some(unsafe { *(val as *const usize) })
            }
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
    match (buf.is_null(), size) {
        (false, Some(s)) => Ok((buf, s)),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

extern "C" fn on_exit() {
    // Never block at exit: if another thread holds the lock, the slot is
    // reaped later as belonging to a dead process.
    if let Ok(d) = driver() {
        let Ok(o) = d.objects.try_lock() else { return };
        for (&dev, a) in &o.attached {
            if a.slot.is_some() {
                d.state.unregister_process(dev, std::process::id());
            }
        }
    }
}

fn register_exit_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(on_exit) };
    });
}

/// The state-file indices `CUDA_VISIBLE_DEVICES` makes visible, in order:
/// unset, all of them; otherwise its comma-separated entries — an index,
/// or a UUID or a prefix of one (`GPU-…`) — up to the first that names no
/// device, as NVIDIA's driver reads it (an entry seen twice ends it too).
pub fn visible_devices(var: Option<&str>, uuids: &[String]) -> Vec<usize> {
    let Some(var) = var else {
        return (0..uuids.len()).collect();
    };
    let mut out = Vec::new();
    for e in var.split(',').map(str::trim) {
        let found = if e.starts_with("GPU-") {
            let mut m = uuids.iter().enumerate().filter(|(_, u)| u.starts_with(e));
            match (m.next(), m.next()) {
                (Some((i, _)), None) => Some(i),
                _ => None,
            }
        } else {
            e.parse::<usize>().ok().filter(|&i| i < uuids.len())
        };
        match found {
            Some(i) if !out.contains(&i) => out.push(i),
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod visible_tests {
    use super::visible_devices;

    #[test]
    fn cuda_visible_devices_reads_as_the_driver_reads_it() {
        let u: Vec<String> = ["GPU-aa11", "GPU-ab22", "GPU-cc33"]
            .map(String::from)
            .to_vec();
        assert_eq!(visible_devices(None, &u), vec![0, 1, 2]);
        assert_eq!(visible_devices(Some("2,0"), &u), vec![2, 0]);
        assert_eq!(
            visible_devices(Some("1,7,0"), &u),
            vec![1],
            "stops at the first bad entry"
        );
        assert_eq!(visible_devices(Some(""), &u), Vec::<usize>::new());
        assert_eq!(visible_devices(Some("GPU-cc,0"), &u), vec![2, 0]);
        assert_eq!(
            visible_devices(Some("GPU-a"), &u),
            Vec::<usize>::new(),
            "ambiguous"
        );
        assert_eq!(visible_devices(Some("0,0"), &u), vec![0]);
    }
}
