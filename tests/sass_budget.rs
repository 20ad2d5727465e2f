//! Performance guarded without a GPU: this test reads the machine code (SASS) of the fatbins the
//! build embedded, with `cuobjdump` from the PyPI CUDA wheels that `scripts/fetch-nvcc.sh` installs
//! beside nvcc, and fails when a kernel breaks its budget in [`BUDGETS`]:
//! - a bandwidth-bound kernel that lost its 128-bit global loads (or, for the ones that write a
//!   full row, its 128-bit stores): the row passes' speed rests on them;
//! - any local-memory access (`LDL`/`STL`: spills, or arrays the compiler could not keep in
//!   registers), on every embedded architecture;
//! - more registers per thread than the budget, or fewer resident blocks per SM than the
//!   documented target (the occupancy is computed for sm_90 from the registers, the block size in
//!   the kernel registry, and static + dynamic shared memory, with H100's limits).
//!
//! And, for the sm_90a wgmma kernels, `scripts/sass_wgmma_hazards.py` must find every HGMMA's A
//! fragment written by its own iteration's load or packing, and no accumulator touched in flight
//! (register allocation is ptxas's, out of the emulator's sight).
//!
//! Every kernel in the registry must match a budget. Skips (printing why) when the kernels were
//! not built or cuobjdump is missing, unless `PREF_KERNELS_REQUIRE_SASS=1` (scripts/test.sh sets
//! it), which turns those into failures. `PREF_KERNELS_SASS_TABLE=1` prints every kernel's numbers.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use pref_kernels::kernels::{self, MODULES};
use pref_kernels::runtime::registry;

/// A kernel family's budget (the first whose prefix matches a kernel's name applies).
struct Budget {
    prefix: &'static str,
    /// Most registers per thread on sm_90.
    max_regs: u32,
    /// Fewest resident blocks per SM on sm_90 (the documented occupancy target).
    min_blocks: u32,
    /// Must hold at least one 128-bit global load.
    wide_loads: bool,
    /// Must hold at least one 128-bit global store.
    wide_stores: bool,
    /// Most local-memory instructions (`LDL`/`STL`) on any embedded arch: 0 but for a kernel
    /// whose stack frame is known and documented.
    max_local_ops: usize,
    /// SASS mnemonics the sm_90 code must contain: the instructions its design rests on.
    needs: &'static [&'static str],
    /// Why these numbers.
    why: &'static str,
}

const fn b(
    prefix: &'static str,
    max_regs: u32,
    min_blocks: u32,
    wide_loads: bool,
    wide_stores: bool,
    why: &'static str,
) -> Budget {
    Budget { prefix, max_regs, min_blocks, wide_loads, wide_stores, max_local_ops: 0, needs: &[], why }
}

/// The budgets, most specific prefix first.
const BUDGETS: &[Budget] = &[
    b(
        "token_logprobs_fwd_full",
        128,
        2,
        true,
        false,
        "row pass, 16-byte loads; TRL's extra outputs cost registers: 2 blocks/SM",
    ),
    b(
        "token_logprobs_fwd",
        64,
        4,
        true,
        false,
        "row pass over [N, V] logits: 16-byte loads, 4 blocks of 256/SM",
    ),
    b("token_logprobs_bwd", 64, 4, true, true, "one read + one write per logit: 16-byte loads and stores"),
    b("token_logprobs_topk", 64, 4, false, false, "radix select on one row per block"),
    b("vocab_shard_partials", 64, 4, true, false, "the row pass over a shard's columns"),
    b("vocab_shard_bwd", 64, 4, true, true, "d/dlogits of a shard: one read + one write"),
    b("vocab_finalize", 64, 4, false, false, "per-row combine of the shards' partials"),
    Budget {
        needs: &["LDGSTS", "LDSM", "HMMA"],
        ..b(
            "shared_prefix_attention_fwd_v2",
            255,
            2,
            false,
            false,
            "v2 forward: cp.async (LDGSTS) double-buffered K/V, ldmatrix (LDSM) operands, 128-row \
             query tiles at d64 (two slabs per warp); 2 CTAs/SM",
        )
    },
    Budget {
        needs: &["LDGSTS", "LDSM", "HGMMA", "WARPGROUP"],
        ..b(
            "shared_prefix_attention_fwd_v3",
            255,
            2,
            false,
            false,
            "v3 forward (sm_90a): both GEMMs on wgmma (HGMMA, with its WARPGROUP arrive/depbar), \
             tile i + 1's S in flight during tile i's softmax (two score tiles: 184 / 232 \
             registers), cp.async K/V, ldmatrix Q fragments per tile; 2 CTAs/SM",
        )
    },
    b(
        "shared_prefix_attention_fwd",
        168,
        2,
        false,
        false,
        "v1 forward: mma.sync, 64x64 tiles; at least 2 CTAs/SM",
    ),
    Budget {
        needs: &["LDGSTS", "LDSM", "HGMMA", "WARPGROUP"],
        ..b(
            "shared_prefix_attention_bwd_dq_v3",
            255,
            2,
            false,
            false,
            "v3 dQ (sm_90a): S, dP and dQ on wgmma, Q and dO fragments reloaded per tile (234 \
             registers at d128); 2 CTAs/SM",
        )
    },
    Budget {
        needs: &["LDGSTS", "LDSM", "HMMA"],
        ..b(
            "shared_prefix_attention_bwd_dq_v2",
            255,
            2,
            false,
            false,
            "v2 dQ: cp.async double-buffered K/V, ldmatrix operands; 2 CTAs/SM",
        )
    },
    Budget {
        needs: &["LDGSTS", "HGMMA", "WARPGROUP"],
        ..b(
            "shared_prefix_attention_bwd_dkdv_v3",
            255,
            2,
            false,
            false,
            "v3 dK/dV (sm_90a): S^T, dP^T (SS form) and dV, dK on wgmma; 2 CTAs/SM",
        )
    },
    Budget {
        needs: &["LDGSTS", "LDSM", "HMMA"],
        ..b(
            "shared_prefix_attention_bwd_dkdv_v2",
            255,
            2,
            false,
            false,
            "v2 dK/dV: cp.async double-buffered Q/dO chunks, ldmatrix operands; 2 CTAs/SM",
        )
    },
    b("shared_prefix_attention_bwd_pre", 64, 4, false, false, "rowsum(dO * O)"),
    b("shared_prefix_attention_bwd_dq", 232, 2, false, false, "v1 dQ: recomputes P and dP; 2 CTAs/SM"),
    b(
        "shared_prefix_attention_bwd_dkdv",
        255,
        2,
        false,
        false,
        "v1 dK/dV: the heaviest tile kernel, 2 CTAs/SM of 4 warps",
    ),
    b("linear_", 64, 4, false, false, "row gathers / scatters and bias broadcasts of the fused head"),
    b("group_loss", 128, 1, false, false, "one block over the lists"),
    Budget {
        max_local_ops: 229,
        ..b(
            "preference_loss",
            128,
            2,
            false,
            false,
            "one thread per pair, launch-bound; its 336-byte stack frame holds the loss-term table and \
             the out-of-line AOT term's call (d3a6780): allowed at today's size, growth fails",
        )
    },
    b("", 128, 2, false, false, "per-sequence and per-token loss kernels: small, launch-bound"),
];

/// H100 (sm_90) per-SM limits.
const REGS_PER_SM: u32 = 65536;
const THREADS_PER_SM: u32 = 2048;
const BLOCKS_PER_SM: u32 = 32;
const SMEM_PER_SM: u32 = 228 * 1024;
const SMEM_RESERVED_PER_BLOCK: u32 = 1024;

/// Resident blocks per SM on sm_90.
fn blocks_per_sm(regs: u32, threads: u32, smem: u32) -> u32 {
    let warps = threads.div_ceil(32);
    let regs_per_warp = (regs * 32).div_ceil(256) * 256;
    let by_regs = (REGS_PER_SM / regs_per_warp.max(1)) / warps.max(1);
    let by_threads = THREADS_PER_SM / threads.max(1);
    let by_smem = SMEM_PER_SM / (smem + SMEM_RESERVED_PER_BLOCK);
    by_regs.min(by_threads).min(by_smem).min(BLOCKS_PER_SM)
}

#[derive(Debug, Default, Clone)]
struct Sass {
    regs: u32,
    shared: u32,
    local_bytes: u32,
    wide_loads: usize,
    wide_stores: usize,
    local_ops: usize,
    /// Every mnemonic's first word (`LDG.E.128` counts as `LDG`), with its count.
    ops: BTreeMap<String, usize>,
}

fn tool(name: &str) -> Option<PathBuf> {
    let dirs = [
        std::env::var_os("PREF_KERNELS_CUDA_TOOLS").map(PathBuf::from),
        std::env::var_os("NVCC").and_then(|n| PathBuf::from(n).parent().map(PathBuf::from)),
        std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin")),
        Some(PathBuf::from("/usr/local/cuda/bin")),
    ];
    dirs.into_iter().flatten().map(|d| d.join(name)).find(|p| p.is_file())
}

fn skip_or_fail(why: &str) {
    if std::env::var("PREF_KERNELS_REQUIRE_SASS").as_deref() == Ok("1") {
        panic!("PREF_KERNELS_REQUIRE_SASS=1 but {why}");
    }
    println!("SKIPPED sass budget: {why}");
}

fn cuobjdump(exe: &PathBuf, args: &[&str], fatbin: &PathBuf) -> String {
    // cuobjdump runs nvdisasm to print SASS: the one beside it (scripts/fetch-nvcc.sh installs both).
    let dir = exe.parent().map(|d| d.to_path_buf()).unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(dir.clone())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("PATH");
    let o = Command::new(exe)
        .args(args)
        .arg(fatbin)
        .env("PATH", path)
        .env("NVDISASM_PATH", &dir)
        .output()
        .expect("run cuobjdump");
    assert!(o.status.success(), "cuobjdump {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every function's numbers in one module for one arch.
fn read_module(exe: &PathBuf, name: &str, bytes: &[u8], arch: &str) -> BTreeMap<String, Sass> {
    let path = std::env::temp_dir().join(format!("prefk-sass-{}-{name}.fatbin", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let mut out: BTreeMap<String, Sass> = BTreeMap::new();
    // "Function name:" then "REG:40 STACK:0 SHARED:0 LOCAL:0 ..." lines.
    let res = cuobjdump(exe, &["-res-usage", "-arch", arch], &path);
    let mut current = None;
    for line in res.lines() {
        let line = line.trim();
        if let Some(f) = line.strip_prefix("Function ") {
            current = Some(f.trim_end_matches(':').to_string());
        } else if let (Some(f), true) = (&current, line.starts_with("REG:")) {
            let field = |key: &str| -> u32 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let e = out.entry(f.clone()).or_default();
            e.regs = field("REG:");
            e.shared = field("SHARED:");
            e.local_bytes = field("LOCAL:");
        }
    }
    // "Function : name" then its instructions.
    let sass = cuobjdump(exe, &["-sass", "-arch", arch], &path);
    let mut current: Option<String> = None;
    for line in sass.lines() {
        if let Some(f) = line.trim().strip_prefix("Function : ") {
            current = Some(f.trim().to_string());
            continue;
        }
        let Some(f) = &current else { continue };
        let Some(op) = line.split(';').next().and_then(|l| l.split("*/").nth(1)) else { continue };
        let mnemonic = op.split_whitespace().find(|w| !w.starts_with('@')).unwrap_or("");
        let e = out.entry(f.clone()).or_default();
        if mnemonic.starts_with("LDG") && mnemonic.contains("128") {
            e.wide_loads += 1;
        }
        if mnemonic.starts_with("STG") && mnemonic.contains("128") {
            e.wide_stores += 1;
        }
        if mnemonic.starts_with("LDL") || mnemonic.starts_with("STL") {
            e.local_ops += 1;
        }
        if !mnemonic.is_empty() {
            *e.ops.entry(mnemonic.split('.').next().unwrap_or("").to_string()).or_default() += 1;
        }
    }
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn every_kernel_keeps_its_sass_budget() {
    if !kernels::built() {
        return skip_or_fail("the kernels were not built (no nvcc)");
    }
    let Some(exe) = tool("cuobjdump") else {
        return skip_or_fail("cuobjdump was not found beside nvcc (scripts/fetch-nvcc.sh installs it)");
    };
    if tool("nvdisasm").is_none() {
        return skip_or_fail(
            "nvdisasm (which cuobjdump runs) was not found beside nvcc (scripts/fetch-nvcc.sh)",
        );
    }
    let archs: Vec<String> = kernels::ARCHS.split(';').map(|a| format!("sm_{}", a.trim())).collect();
    let table = std::env::var("PREF_KERNELS_SASS_TABLE").as_deref() == Ok("1");
    let mut failures = Vec::new();
    let mut seen = 0;
    for arch in &archs {
        for (module, bytes) in MODULES {
            let funcs = read_module(&exe, module, bytes.expect("built"), arch);
            for spec in registry::module_kernels(module) {
                let Some(s) = funcs.get(&spec.name) else {
                    failures.push(format!("{arch} {}: not in the fatbin's SASS", spec.name));
                    continue;
                };
                seen += 1;
                let budget = BUDGETS.iter().find(|b| spec.name.starts_with(b.prefix)).expect("catch-all");
                if s.local_ops > budget.max_local_ops || s.local_bytes > 0 {
                    failures.push(format!(
                        "{arch} {}: local memory ({} LDL/STL > {}, {} spill bytes)",
                        spec.name, s.local_ops, budget.max_local_ops, s.local_bytes
                    ));
                }
                // The budgets are sm_90's: the plain or the arch-specific (sm_90a) build.
                if arch.trim_end_matches('a') != "sm_90" {
                    continue;
                }
                let blocks = blocks_per_sm(s.regs, spec.block_threads, s.shared + spec.dynamic_smem);
                if table {
                    println!(
                        "{:<48} regs {:>3} threads {:>4} smem {:>6} blocks/SM {:>2} ldg128 {:>2} stg128 {:>2}",
                        spec.name,
                        s.regs,
                        spec.block_threads,
                        s.shared + spec.dynamic_smem,
                        blocks,
                        s.wide_loads,
                        s.wide_stores
                    );
                }
                let mut bad = Vec::new();
                if s.regs > budget.max_regs {
                    bad.push(format!("{} registers > {}", s.regs, budget.max_regs));
                }
                if blocks < budget.min_blocks {
                    bad.push(format!("{blocks} blocks/SM < {}", budget.min_blocks));
                }
                if budget.wide_loads && s.wide_loads == 0 {
                    bad.push("no 128-bit global load".into());
                }
                if budget.wide_stores && s.wide_stores == 0 {
                    bad.push("no 128-bit global store".into());
                }
                for need in budget.needs {
                    if !s.ops.contains_key(*need) {
                        bad.push(format!("no {need} instruction"));
                    }
                }
                if !bad.is_empty() {
                    failures.push(format!(
                        "{arch} {}: {} (budget: {})",
                        spec.name,
                        bad.join(", "),
                        budget.why
                    ));
                }
            }
        }
    }
    assert!(seen >= registry::kernels().len(), "read {seen} kernels' SASS");
    assert!(failures.is_empty(), "SASS budget broken:\n{}", failures.join("\n"));
}

#[test]
fn occupancy_model_matches_known_cases() {
    // 256 threads at 64 registers: 8 warps x 2048 registers = 16 K per block, 4 blocks by registers.
    assert_eq!(blocks_per_sm(64, 256, 0), 4);
    // 128 threads at 168 registers (rounded to 5376 per warp): 12 warps fit, 3 blocks.
    assert_eq!(blocks_per_sm(168, 128, 0), 3);
    // Shared memory binds: 69632 + 1024 bytes per block, 3 blocks in 228 KiB.
    assert_eq!(blocks_per_sm(32, 128, 69632), 3);
    // Threads bind: 1024-thread blocks, 2 per SM.
    assert_eq!(blocks_per_sm(16, 1024, 0), 2);
}

/// A loop whose HGMMA reads an A fragment loaded before the loop and overwritten by the packing
/// of P inside it: the clobber ptxas once produced in the attention v3 (the checker must flag
/// it), and the same loop reloading the fragment each iteration (it must not).
const CLOBBER_FIXTURE: &str = "
\t\tFunction : fixture_clobbered
        /*0000*/                   LDSM.16.M88.4 R88, [R2] ;                                  /* 0x0000000000000000 */
        /*0010*/                   WARPGROUP.ARRIVE ;                                         /* 0x0000000000000000 */
        /*0020*/                   HGMMA.64x64x16.F32.BF16 R24, R88, gdesc[UR4], RZ, !UPT ;   /* 0x0000000000000000 */
        /*0030*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;                            /* 0x0000000000000000 */
        /*0040*/                   F2FP.BF16.F32.PACK_AB R88, R25, R24 ;                      /* 0x0000000000000000 */
        /*0050*/                   F2FP.BF16.F32.PACK_AB R89, R27, R26 ;                      /* 0x0000000000000000 */
        /*0060*/               @P0 BRA 0x10 ;                                                 /* 0x0000000000000000 */
        /*0070*/                   EXIT ;                                                     /* 0x0000000000000000 */
\t\tFunction : fixture_reloaded
        /*0000*/                   LDSM.16.M88.4 R88, [R2] ;                                  /* 0x0000000000000000 */
        /*0010*/                   WARPGROUP.ARRIVE ;                                         /* 0x0000000000000000 */
        /*0020*/                   HGMMA.64x64x16.F32.BF16 R24, R88, gdesc[UR4], RZ, !UPT ;   /* 0x0000000000000000 */
        /*0030*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;                            /* 0x0000000000000000 */
        /*0040*/                   F2FP.BF16.F32.PACK_AB R88, R25, R24 ;                      /* 0x0000000000000000 */
        /*0050*/               @P0 BRA 0x0 ;                                                  /* 0x0000000000000000 */
        /*0060*/                   EXIT ;                                                     /* 0x0000000000000000 */
";

/// Runs scripts/sass_wgmma_hazards.py over `sass`; returns (exit success, its output).
fn wgmma_hazards(python: &str, sass: &str, name: &str) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("prefk-{}-{name}.sass", std::process::id()));
    std::fs::write(&path, sass).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/sass_wgmma_hazards.py");
    let o = Command::new(python).arg(script).arg(&path).output().expect("run python3");
    let _ = std::fs::remove_file(&path);
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The wgmma kernels' register hazards that no emulator can see (register allocation is ptxas's):
/// scripts/sass_wgmma_hazards.py over the sm_90a SASS of every module with an HGMMA, after
/// checking on a fixture that it flags the clobber it exists for.
#[test]
fn wgmma_operands_survive_register_allocation() {
    if !kernels::built() {
        return skip_or_fail("the kernels were not built (no nvcc)");
    }
    if !kernels::ARCHS.split(';').any(|a| a == "90a") {
        println!("SKIPPED wgmma hazards: no sm_90a code in this build (ARCHS {})", kernels::ARCHS);
        return;
    }
    let Some(exe) = tool("cuobjdump") else {
        return skip_or_fail("cuobjdump was not found beside nvcc (scripts/fetch-nvcc.sh installs it)");
    };
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    if Command::new(&python).arg("--version").output().is_err() {
        return skip_or_fail("python3 was not found (set PYTHON)");
    }
    let (ok, out) = wgmma_hazards(&python, CLOBBER_FIXTURE, "fixture");
    assert!(!ok && out.contains("fixture_clobbered: A R88") && !out.contains("fixture_reloaded"), "{out}");
    let mut checked = 0;
    for (module, bytes) in MODULES {
        let path = std::env::temp_dir().join(format!("prefk-hz-{}-{module}.fatbin", std::process::id()));
        std::fs::write(&path, bytes.expect("built")).unwrap();
        let sass = cuobjdump(&exe, &["-sass", "-arch", "sm_90a"], &path);
        let _ = std::fs::remove_file(&path);
        if !sass.contains("HGMMA") {
            continue;
        }
        checked += sass.matches("HGMMA").count();
        let (ok, out) = wgmma_hazards(&python, &sass, module);
        assert!(ok, "wgmma register hazards in {module}'s sm_90a SASS:\n{out}");
    }
    assert!(checked > 0, "no HGMMA found in the sm_90a SASS (the v3 attention kernels use it)");
}
