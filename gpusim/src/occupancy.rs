//! The CUDA occupancy calculator: how many blocks of a kernel fit on one SM at
//! once, limited by warps, registers, shared memory and the block-slot count.
//! The arithmetic follows NVIDIA's `cuda_occupancy.h` for compute capability
//! 7.0 and later (no partitioned global caching).

use crate::config::DeviceConfig;

/// Registers are allocated per warp in units of this many.
pub const REG_ALLOCATION_UNIT: u32 = 256;
/// The register file is split into this many sub-partitions; a warp's
/// registers come from one of them.
pub const SUB_PARTITIONS: u32 = 4;
/// Shared memory is allocated per block in units of this many bytes.
pub const SMEM_ALLOCATION_UNIT: u32 = 128;
/// Most registers a thread may use.
pub const MAX_REGS_PER_THREAD: u32 = 255;
pub const WARP_SIZE: u32 = 32;
pub const MAX_THREADS_PER_BLOCK: u32 = 1024;

/// What a kernel asks of an SM per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDemand {
    pub threads: u32,
    pub regs_per_thread: u32,
    /// Static plus dynamic shared memory, in bytes, without the reserved part.
    pub shared_bytes: u32,
}

/// Which resource bounds the occupancy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limiter {
    Warps,
    Registers,
    SharedMemory,
    BlockSlots,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub blocks_per_sm: u32,
    pub limiter: Limiter,
}

fn div_up(a: u32, b: u32) -> u32 {
    a.div_ceil(b)
}
fn round_up(a: u32, b: u32) -> u32 {
    a.div_ceil(b) * b
}

/// Blocks of `d` resident on one SM of `dev` (0 when a block cannot fit).
pub fn blocks_per_sm(dev: &DeviceConfig, d: BlockDemand) -> Occupancy {
    if d.threads == 0 || d.threads > MAX_THREADS_PER_BLOCK {
        return Occupancy {
            blocks_per_sm: 0,
            limiter: Limiter::Warps,
        };
    }
    let warps_per_block = div_up(d.threads, WARP_SIZE);
    let by_warps = (dev.max_threads_per_sm / WARP_SIZE) / warps_per_block;

    let by_regs = if d.regs_per_thread == 0 {
        u32::MAX
    } else if !registers_fit_block(dev, d.regs_per_thread, warps_per_block) {
        0
    } else {
        let regs_per_warp = round_up(d.regs_per_thread * WARP_SIZE, REG_ALLOCATION_UNIT);
        let warps_per_subpartition = (dev.registers_per_sm / SUB_PARTITIONS) / regs_per_warp;
        (warps_per_subpartition * SUB_PARTITIONS) / warps_per_block
    };

    let smem_per_block = round_up(
        d.shared_bytes
            .saturating_add(dev.reserved_shared_memory_per_block),
        SMEM_ALLOCATION_UNIT,
    );
    let by_smem = if d.shared_bytes > dev.shared_memory_per_block_optin {
        0
    } else {
        dev.shared_memory_per_sm
            .checked_div(smem_per_block)
            .unwrap_or(u32::MAX)
    };

    let mut best = Occupancy {
        blocks_per_sm: dev.max_blocks_per_sm,
        limiter: Limiter::BlockSlots,
    };
    for (n, lim) in [
        (by_warps, Limiter::Warps),
        (by_regs, Limiter::Registers),
        (by_smem, Limiter::SharedMemory),
    ] {
        if n < best.blocks_per_sm {
            best = Occupancy {
                blocks_per_sm: n,
                limiter: lim,
            };
        }
    }
    best
}

/// The hardware check of `cuda_occupancy.h`: a block's registers, counted
/// per warp and with its warps rounded up to the sub-partitions, must fit the
/// per-block register file.
fn registers_fit_block(dev: &DeviceConfig, regs_per_thread: u32, warps: u32) -> bool {
    if regs_per_thread > MAX_REGS_PER_THREAD {
        return false;
    }
    let regs_per_warp = round_up(regs_per_thread * WARP_SIZE, REG_ALLOCATION_UNIT);
    regs_per_warp as u64 * round_up(warps, SUB_PARTITIONS) as u64 <= dev.registers_per_sm as u64
}

/// The largest block a kernel using `regs_per_thread` registers can launch
/// with (what `CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK` reports), capped by
/// the kernel's own `.maxntid` when it has one.
pub fn max_threads_per_block(
    dev: &DeviceConfig,
    regs_per_thread: u32,
    maxntid: Option<u32>,
) -> u32 {
    let cap = maxntid
        .unwrap_or(MAX_THREADS_PER_BLOCK)
        .min(MAX_THREADS_PER_BLOCK);
    let mut warps = cap / WARP_SIZE;
    while warps > 0 && !registers_fit_block(dev, regs_per_thread, warps) {
        warps -= 1;
    }
    cap.min(warps * WARP_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h100_cases() {
        let dev = DeviceConfig::default();
        let occ = |threads, regs, smem| {
            blocks_per_sm(
                &dev,
                BlockDemand {
                    threads,
                    regs_per_thread: regs,
                    shared_bytes: smem,
                },
            )
        };
        assert_eq!(occ(256, 32, 0).blocks_per_sm, 8);
        assert_eq!(occ(256, 32, 0).limiter, Limiter::Warps);
        assert_eq!(occ(32, 16, 0).blocks_per_sm, 32);
        assert_eq!(occ(32, 16, 0).limiter, Limiter::BlockSlots);
        // 128 regs x 256 threads: 4096 regs per warp -> 4 warps per sub-partition.
        assert_eq!(
            occ(256, 128, 0),
            Occupancy {
                blocks_per_sm: 2,
                limiter: Limiter::Registers
            }
        );
        // 100 KiB + 1 KiB reserved per block: two fit in 228 KiB.
        assert_eq!(occ(128, 32, 100 * 1024).blocks_per_sm, 2);
        assert_eq!(occ(128, 32, 300 * 1024).blocks_per_sm, 0);
        assert_eq!(max_threads_per_block(&dev, 255, None), 256);
        assert_eq!(max_threads_per_block(&dev, 32, Some(128)), 128);
    }
}
