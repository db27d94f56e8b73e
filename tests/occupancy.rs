//! gpusim's occupancy API against the occupancy calculator's formula,
//! computed here independently (after NVIDIA's cuda_occupancy.h for compute
//! capability 9.0) for a table of register, shared memory and block sizes.

use crate::support::*;

/// Blocks per SM on an H100 (cc 9.0): 2048 threads, 64K registers, 228 KiB
/// shared memory, 32 blocks per SM, 1 KiB reserved per block.
fn calculator(block: u32, regs: u32, static_smem: u32, dynamic_smem: u32) -> i64 {
    let up = |x: u32, g: u32| x.div_ceil(g) * g;
    if block > 1024 {
        return 0;
    }
    let warps = block.div_ceil(32);
    let warp_limit = 64 / warps;
    let regs_per_warp = up(regs * 32, 256);
    let reg_limit = if regs_per_warp * up(warps, 4) > 65536 {
        0
    } else {
        ((65536 / 4) / regs_per_warp) * 4 / warps
    };
    // Without an opt-in, static plus dynamic shared memory may not pass 48 KiB.
    let smem_limit = if static_smem + dynamic_smem > 48 * 1024 {
        0
    } else {
        (228 * 1024) / up(static_smem + dynamic_smem + 1024, 128)
    };
    warp_limit.min(reg_limit).min(smem_limit).min(32) as i64
}

#[test]
fn occupancy_matches_the_calculator() {
    let sim = Sim::new("occupancy");
    let regs = [16, 32, 40, 64, 72, 128, 168, 255];
    let smem = [0, 12 * 1024, 48 * 1024];
    let mut ptx = String::from(".version 7.0\n.target sm_70\n.address_size 64\n");
    for r in regs {
        for s in smem {
            ptx += &format!(
                "// gpusim: kernel=k_{r}_{s} regs={r} smem={s}\n.visible .entry k_{r}_{s}() {{ ret; }}\n"
            );
        }
    }
    let file = sim.dir.join("kernels.ptx");
    std::fs::write(&file, ptx).unwrap();

    let mut cases = Vec::new();
    for r in regs {
        for s in smem {
            for block in [32, 64, 96, 128, 160, 192, 256, 384, 512, 640, 768, 1024] {
                for dynamic in [0, 2000, 30000] {
                    cases.push((r, s, block, dynamic));
                }
            }
        }
    }
    let input: String = cases
        .iter()
        .map(|(r, s, b, d)| format!("k_{r}_{s} {b} {d}\n"))
        .collect();
    let mut cmd = sim.cmd(c_client("occupancy"));
    cmd.arg(&file);
    let out = run_with_stdin(cmd, &input);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), cases.len(), "{text}");
    let mut nonzero = 0;
    for ((r, s, b, d), line) in cases.iter().zip(lines) {
        let w: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(w[3], "0", "query failed: {line}");
        let got: i64 = w[4].parse().unwrap();
        let want = calculator(*b, *r, *s, *d);
        assert_eq!(got, want, "regs {r} static {s} block {b} dynamic {d}");
        nonzero += (got > 0) as usize;
    }
    // The table exercises every limit, including launches that cannot fit.
    assert!(
        nonzero > 100 && nonzero < cases.len(),
        "{nonzero} of {}",
        cases.len()
    );
}
