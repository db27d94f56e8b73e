//! Kernel images: gpusim accepts PTX text, the form a real driver JIT-compiles.
//! It takes from it what the execution model needs: each `.entry` with its
//! parameter layout, `.maxntid`/`.reqntid`/`.maxnreg`, and static `.shared`
//! declarations. What PTX cannot say (how long a block runs, how many
//! registers ptxas would give it) comes from cost directives in comments:
//!
//! ```text
//! // gpusim: kernel=busy_wait cycles_param=0 regs=16
//! // gpusim: kernel=* block_ns=2000
//! ```
//!
//! Keys: `kernel` (an entry name, or `*` for every entry), `regs` (registers
//! per thread), `smem` (static shared bytes, overriding the declarations),
//! `block_ns` (simulated ns one block runs), `block_cycles` (SM cycles one
//! block runs) and `cycles_param` (the index of an integer parameter that
//! holds the cycles per block, as in a busy-wait kernel); `bytes` and
//! `bytes_param` say how many bytes of device memory the whole kernel reads
//! or writes (a fixed count, or an integer parameter's), which it moves at
//! the bandwidth its SMs can draw. A real driver ignores these comments, so
//! the same PTX runs on both.

use std::collections::HashMap;

/// How long one block of a kernel runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BlockCost {
    Ns(u64),
    Cycles(u64),
    /// Cycles read from the integer parameter with this index at launch.
    CyclesParam(usize),
}

impl BlockCost {
    /// The launch parameter this cost is read from, if any.
    pub fn param(self) -> Option<usize> {
        match self {
            BlockCost::CyclesParam(p) => Some(p),
            BlockCost::Ns(_) | BlockCost::Cycles(_) => None,
        }
    }
}

/// How many bytes of device memory a kernel moves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemoryCost {
    Bytes(u64),
    /// Bytes read from the integer parameter with this index at launch.
    BytesParam(usize),
}

impl MemoryCost {
    /// The launch parameter the byte count is read from, if any.
    pub fn param(self) -> Option<usize> {
        match self {
            MemoryCost::BytesParam(p) => Some(p),
            MemoryCost::Bytes(_) => None,
        }
    }
}

/// The default when a kernel has no directive: one simulated microsecond per block.
pub const DEFAULT_BLOCK_NS: u64 = 1_000;
/// The default registers per thread when neither a directive nor `.maxnreg` says.
pub const DEFAULT_REGS: u32 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    pub offset: usize,
    pub size: usize,
    pub align: usize,
    /// An integer scalar (`.u*`, `.s*`, `.b*` of 1–8 bytes) that a cost directive may read.
    pub integer: bool,
    pub signed: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    /// Total size of the parameter buffer, as packed by `CU_LAUNCH_PARAM_BUFFER_POINTER`.
    pub params_size: usize,
    pub maxntid: Option<u32>,
    pub reqntid: Option<u32>,
    pub regs: u32,
    pub static_smem: u32,
    pub cost: BlockCost,
    /// Device memory traffic; none unless a directive says.
    pub memory: Option<MemoryCost>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    pub kernels: Vec<Kernel>,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PtxError {
    /// Not PTX at all (a cubin, a fatbin, or random bytes).
    #[error("image is not PTX text: {0}")]
    NotPtx(String),
    /// PTX that does not parse.
    #[error("invalid PTX: {0}")]
    Invalid(String),
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            let end = r.find('\n').unwrap_or(r.len());
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("/*") {
            let end = r.find("*/").map(|i| i + 2).unwrap_or(r.len());
            out.push(' ');
            rest = &r[end..];
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn tokenize(text: &str) -> Vec<&str> {
    let mut toks = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        let punct = matches!(c, '(' | ')' | ',' | ';' | '{' | '}' | '[' | ']');
        if c.is_whitespace() || punct {
            if let Some(s) = start.take() {
                toks.push(&text[s..i]);
            }
            if punct {
                toks.push(&text[i..i + 1]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        toks.push(&text[s..]);
    }
    toks
}

/// Size in bytes and signedness of a PTX scalar type such as `.u64`.
fn scalar(ty: &str) -> Option<(usize, bool, bool)> {
    let (kind, bits) = ty.strip_prefix('.')?.split_at(1);
    let bits: usize = bits.parse().ok()?;
    if ![8, 16, 32, 64].contains(&bits) {
        return None;
    }
    match kind {
        "u" | "b" => Some((bits / 8, true, false)),
        "s" => Some((bits / 8, true, true)),
        "f" => Some((bits / 8, false, false)),
        _ => None,
    }
}

#[derive(Default, Clone)]
struct Directive {
    regs: Option<u32>,
    smem: Option<u32>,
    cost: Option<BlockCost>,
    memory: Option<MemoryCost>,
}

fn parse_directives(text: &str) -> Result<HashMap<String, Directive>, PtxError> {
    let mut map: HashMap<String, Directive> = HashMap::new();
    for line in text.lines() {
        let Some(pos) = line.find("gpusim:") else {
            continue;
        };
        if !line[..pos].trim_end().ends_with("//") {
            continue;
        }
        let mut kernel = None;
        let mut d = Directive::default();
        for kv in line[pos + 7..].split_whitespace() {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                PtxError::Invalid(format!("gpusim directive item {kv:?} is not key=value"))
            })?;
            let n = || {
                v.parse::<u64>().map_err(|_| {
                    PtxError::Invalid(format!("gpusim directive {k}={v:?}: not a whole number"))
                })
            };
            match k {
                "kernel" => kernel = Some(v.to_string()),
                "regs" => d.regs = Some(n()? as u32),
                "smem" => d.smem = Some(n()? as u32),
                "block_ns" => d.cost = Some(BlockCost::Ns(n()?)),
                "block_cycles" => d.cost = Some(BlockCost::Cycles(n()?)),
                "cycles_param" => d.cost = Some(BlockCost::CyclesParam(n()? as usize)),
                "bytes" => d.memory = Some(MemoryCost::Bytes(n()?)),
                "bytes_param" => d.memory = Some(MemoryCost::BytesParam(n()? as usize)),
                _ => {
                    return Err(PtxError::Invalid(format!(
                        "unknown gpusim directive key {k:?}"
                    )));
                }
            }
        }
        let kernel = kernel.ok_or_else(|| {
            PtxError::Invalid(format!(
                "gpusim directive without kernel=: {:?}",
                line.trim()
            ))
        })?;
        let e = map.entry(kernel).or_default();
        e.regs = d.regs.or(e.regs);
        e.smem = d.smem.or(e.smem);
        e.cost = d.cost.or(e.cost);
        e.memory = d.memory.or(e.memory);
    }
    Ok(map)
}

impl Module {
    /// Parses a module image as `cuModuleLoadData` receives it (NUL-terminated
    /// or not).
    pub fn parse(image: &[u8]) -> Result<Module, PtxError> {
        let image = match image.iter().position(|&b| b == 0) {
            Some(n) => &image[..n],
            None => image,
        };
        if image.starts_with(b"\x7fELF") {
            return Err(PtxError::NotPtx(
                "an ELF cubin (gpusim runs PTX only)".into(),
            ));
        }
        let text =
            std::str::from_utf8(image).map_err(|_| PtxError::NotPtx("not UTF-8 text".into()))?;
        let directives = parse_directives(text)?;
        let code = strip_comments(text);
        let toks = tokenize(&code);
        if !toks.contains(&".version") || !toks.contains(&".target") {
            return Err(PtxError::NotPtx(
                "no .version and .target directives".into(),
            ));
        }
        let mut kernels = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            if toks[i] != ".entry" {
                i += 1;
                continue;
            }
            let (k, next) = parse_entry(&toks, i + 1)?;
            i = next;
            kernels.push(k);
        }
        for (name, d) in &directives {
            if name != "*" && !kernels.iter().any(|k| &k.name == name) {
                return Err(PtxError::Invalid(format!(
                    "gpusim directive names unknown kernel {name:?}"
                )));
            }
            let _ = d;
        }
        for k in &mut kernels {
            for key in ["*", k.name.as_str()] {
                if let Some(d) = directives.get(key) {
                    k.regs = d.regs.unwrap_or(k.regs);
                    k.static_smem = d.smem.unwrap_or(k.static_smem);
                    k.cost = d.cost.unwrap_or(k.cost);
                    k.memory = d.memory.or(k.memory);
                }
            }
            let read = [
                ("cycles_param", k.cost.param()),
                ("bytes_param", k.memory.and_then(MemoryCost::param)),
            ];
            for (key, p) in read {
                if let Some(p) = p
                    && !k.params.get(p).is_some_and(|p| p.integer)
                {
                    return Err(PtxError::Invalid(format!(
                        "kernel {}: {key}={p} is not an integer parameter",
                        k.name
                    )));
                }
            }
            if k.regs > crate::occupancy::MAX_REGS_PER_THREAD {
                return Err(PtxError::Invalid(format!(
                    "kernel {}: regs={} exceeds 255",
                    k.name, k.regs
                )));
            }
        }
        Ok(Module { kernels })
    }

    pub fn kernel(&self, name: &str) -> Option<&Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }
}

fn parse_entry(toks: &[&str], mut i: usize) -> Result<(Kernel, usize), PtxError> {
    let bad = |m: String| PtxError::Invalid(m);
    let name = toks
        .get(i)
        .ok_or_else(|| bad(".entry without a name".into()))?
        .to_string();
    i += 1;
    let mut params = Vec::new();
    let mut offset = 0usize;
    if toks.get(i) == Some(&"(") {
        i += 1;
        while toks.get(i).is_some_and(|t| *t != ")") {
            if toks[i] == "," {
                i += 1;
                continue;
            }
            if toks[i] != ".param" {
                return Err(bad(format!(
                    "entry {name}: expected .param, found {:?}",
                    toks[i]
                )));
            }
            i += 1;
            let mut align = None;
            let mut ty = None;
            let mut count = 1usize;
            while let Some(&t) = toks.get(i) {
                if t == "," || t == ")" {
                    break;
                }
                if t == ".align" {
                    align = toks.get(i + 1).and_then(|a| a.parse::<usize>().ok());
                    i += 2;
                    continue;
                }
                if t == "[" {
                    count = toks
                        .get(i + 1)
                        .and_then(|n| n.parse::<usize>().ok())
                        .ok_or_else(|| bad(format!("entry {name}: bad parameter array size")))?;
                    i += 3;
                    continue;
                }
                if let Some(s) = scalar(t) {
                    ty = Some(s);
                }
                i += 1;
            }
            let (size, integer, signed) =
                ty.ok_or_else(|| bad(format!("entry {name}: parameter without a type")))?;
            let align = align.unwrap_or(size).max(1);
            offset = offset.div_ceil(align) * align;
            let total = size * count;
            params.push(Param {
                offset,
                size: total,
                align,
                integer: integer && count == 1,
                signed,
            });
            offset += total;
        }
        if toks.get(i) != Some(&")") {
            return Err(bad(format!("entry {name}: unterminated parameter list")));
        }
        i += 1;
    }
    let mut k = Kernel {
        name,
        params,
        params_size: offset,
        maxntid: None,
        reqntid: None,
        regs: DEFAULT_REGS,
        static_smem: 0,
        cost: BlockCost::Ns(DEFAULT_BLOCK_NS),
        memory: None,
    };
    // Performance directives up to the body.
    let dims = |toks: &[&str], mut j: usize| -> (u32, usize) {
        let mut prod = 1u32;
        while let Some(n) = toks.get(j).and_then(|t| t.parse::<u32>().ok()) {
            prod = prod.saturating_mul(n);
            j += 1;
            if toks.get(j) == Some(&",") {
                j += 1;
            } else {
                break;
            }
        }
        (prod, j)
    };
    while let Some(&t) = toks.get(i) {
        match t {
            "{" => break,
            ".maxntid" => {
                let (p, j) = dims(toks, i + 1);
                k.maxntid = Some(p);
                i = j;
            }
            ".reqntid" => {
                let (p, j) = dims(toks, i + 1);
                k.reqntid = Some(p);
                i = j;
            }
            ".maxnreg" => {
                k.regs = toks
                    .get(i + 1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(k.regs);
                i += 2;
            }
            _ => i += 1,
        }
    }
    if toks.get(i) != Some(&"{") {
        return Err(bad(format!("entry {}: no body", k.name)));
    }
    let mut depth = 0i32;
    while let Some(&t) = toks.get(i) {
        match t {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return Ok((k, i + 1));
                }
            }
            ".shared" if toks.get(i.wrapping_sub(1)) != Some(&".extern") => {
                // .shared [.align N] .bX name [ N ] ;
                let mut j = i + 1;
                let mut size = None;
                let mut count = 1usize;
                while let Some(&u) = toks.get(j) {
                    if u == ";" {
                        break;
                    }
                    if u == "[" {
                        count *= toks
                            .get(j + 1)
                            .and_then(|n| n.parse::<usize>().ok())
                            .unwrap_or(1);
                        j += 3;
                        continue;
                    }
                    if let Some((s, _, _)) = scalar(u) {
                        size = Some(s);
                    }
                    j += 1;
                }
                k.static_smem += (size.unwrap_or(0) * count) as u32;
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Err(bad(format!("entry {}: unbalanced braces", k.name)))
}

/// The busy-wait kernel `vagus load` runs: each thread spins until its SM's
/// cycle counter has advanced by the parameter's count. On a real GPU its
/// block time is cycles / SM clock; gpusim reads the same parameter.
pub const BUSY_WAIT_PTX: &str = r#"//
// vagus busy-wait kernel: every thread spins for `cycles` SM clock cycles.
// gpusim: kernel=vagus_busy_wait cycles_param=0 regs=8
//
.version 7.0
.target sm_70
.address_size 64

.visible .entry vagus_busy_wait(
    .param .u64 vagus_busy_wait_param_0
)
{
    .reg .pred %p<2>;
    .reg .b64 %rd<6>;

    ld.param.u64 %rd1, [vagus_busy_wait_param_0];
    mov.u64 %rd2, %clock64;
$L_spin:
    mov.u64 %rd3, %clock64;
    sub.s64 %rd4, %rd3, %rd2;
    setp.lt.s64 %p1, %rd4, %rd1;
    @%p1 bra $L_spin;
    ret;
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_wait_parses() {
        let m = Module::parse(BUSY_WAIT_PTX.as_bytes()).unwrap();
        let k = m.kernel("vagus_busy_wait").unwrap();
        assert_eq!(k.params.len(), 1);
        assert_eq!(k.params[0].size, 8);
        assert_eq!(k.cost, BlockCost::CyclesParam(0));
        assert_eq!(k.regs, 8);
    }

    #[test]
    fn params_shared_and_launch_bounds() {
        let ptx = ".version 8.0\n.target sm_90\n.address_size 64\n\
            .visible .entry k1(.param .u32 a, .param .u64 .ptr .global .align 8 b, .param .align 16 .b8 c[24])\n\
            .maxntid 128, 2, 1\n.maxnreg 64\n{\n .shared .align 4 .b8 buf[4096];\n .shared .f32 t[32][4];\n\
             .extern .shared .align 16 .b8 dyn[];\n ret;\n}\n\
            .entry k2 .reqntid 64 { ret; }\n";
        let m = Module::parse(ptx.as_bytes()).unwrap();
        let k = m.kernel("k1").unwrap();
        assert_eq!(
            k.params.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![0, 8, 16]
        );
        assert_eq!(k.params_size, 40);
        assert_eq!(k.maxntid, Some(256));
        assert_eq!(k.regs, 64);
        assert_eq!(k.static_smem, 4096 + 512);
        assert_eq!(m.kernel("k2").unwrap().reqntid, Some(64));
    }

    #[test]
    fn bad_images_are_named() {
        assert!(matches!(
            Module::parse(b"\x7fELF\x02\x01"),
            Err(PtxError::NotPtx(_))
        ));
        assert!(matches!(
            Module::parse(b"hello world"),
            Err(PtxError::NotPtx(_))
        ));
        let unbalanced = b".version 7.0\n.target sm_70\n.entry k() { ret;\n";
        assert!(matches!(
            Module::parse(unbalanced),
            Err(PtxError::Invalid(_))
        ));
        let bad_dir = b"// gpusim: kernel=nope block_ns=5\n.version 7.0\n.target sm_70\n.entry k() { ret; }\n";
        let e = Module::parse(bad_dir).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let bad_bytes = b"// gpusim: kernel=k bytes_param=1\n.version 7.0\n.target sm_70\n.entry k(.param .u64 a) { ret; }\n";
        let e = Module::parse(bad_bytes).unwrap_err().to_string();
        assert!(
            e.contains("bytes_param=1 is not an integer parameter"),
            "{e}"
        );
    }

    #[test]
    fn memory_directives() {
        let ptx = "// gpusim: kernel=k bytes=4096 block_ns=10\n// gpusim: kernel=p bytes_param=1\n\
            .version 7.0\n.target sm_70\n.entry k() { ret; }\n.entry p(.param .u64 a, .param .u32 b) { ret; }\n";
        let m = Module::parse(ptx.as_bytes()).unwrap();
        assert_eq!(m.kernel("k").unwrap().memory, Some(MemoryCost::Bytes(4096)));
        assert_eq!(
            m.kernel("p").unwrap().memory,
            Some(MemoryCost::BytesParam(1))
        );
        assert_eq!(
            Module::parse(BUSY_WAIT_PTX.as_bytes()).unwrap().kernels[0].memory,
            None
        );
    }
}
