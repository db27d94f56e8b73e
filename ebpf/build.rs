//! Compiles `src/vagus.bpf.c` with clang for the BPF target (CO-RE, against
//! a `vmlinux.h` that bpftool dumps from this machine's kernel BTF). Without
//! clang, bpftool or kernel BTF the build still succeeds: the crate is built
//! with `cfg(vagus_no_bpf)` and the agent runs without probes, saying why.

use std::path::{Path, PathBuf};
use std::process::Command;

fn find(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|c| c.to_string())
}

fn build(out: &Path) -> Result<PathBuf, String> {
    let clang = std::env::var("VAGUS_BPF_CLANG")
        .ok()
        .or_else(|| find(&["clang-19", "clang-18", "clang-17", "clang"]))
        .ok_or("no clang found (install clang-19)")?;
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    if !btf.exists() {
        return Err("this kernel exposes no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    let bpftool = find(&["bpftool", "/usr/sbin/bpftool"]).ok_or("no bpftool found")?;
    let dump = Command::new(&bpftool)
        .args(["btf", "dump", "file"])
        .arg(btf)
        .args(["format", "c"])
        .output()
        .map_err(|e| format!("bpftool: {e}"))?;
    if !dump.status.success() {
        return Err(format!(
            "bpftool btf dump failed: {}",
            String::from_utf8_lossy(&dump.stderr)
        ));
    }
    std::fs::write(out.join("vmlinux.h"), &dump.stdout).map_err(|e| e.to_string())?;
    let obj = out.join("vagus.bpf.o");
    let cc = Command::new(&clang)
        .args([
            "-g",
            "-O2",
            "-Wall",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
        ])
        .arg("-I")
        .arg(out)
        .args(["-I", "src", "-c", "src/vagus.bpf.c", "-o"])
        .arg(&obj)
        .output()
        .map_err(|e| format!("{clang}: {e}"))?;
    if !cc.status.success() {
        return Err(format!(
            "{clang} failed:\n{}",
            String::from_utf8_lossy(&cc.stderr)
        ));
    }
    // Keep BTF, drop DWARF: a tenth of the size.
    if let Some(strip) = find(&["llvm-strip-19", "llvm-strip-18", "llvm-strip"]) {
        let _ = Command::new(strip).arg("-g").arg(&obj).status();
    }
    Ok(obj)
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(vagus_no_bpf)");
    println!("cargo::rerun-if-changed=src/vagus.bpf.c");
    println!("cargo::rerun-if-changed=src/vagus.h");
    println!("cargo::rerun-if-env-changed=VAGUS_BPF_CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    match build(&out) {
        Ok(_) => {}
        Err(why) => {
            println!("cargo::warning=building without eBPF probes: {why}");
            println!("cargo::rustc-cfg=vagus_no_bpf");
            std::fs::write(out.join("why-no-bpf.txt"), why).expect("write OUT_DIR");
        }
    }
}
