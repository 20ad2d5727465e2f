//! The emulator backend's own tests: each checker finds a fault planted in a tiny kernel
//! (`kernels/emulator/selftest.cu`) and reports kernel, block, thread and address; correct kernels
//! raise nothing; warp shuffles, votes and mma.sync m16n8k16 agree with plain computations.
//! Runs on every machine (the emulator needs no GPU).
#![allow(clippy::needless_range_loop)] // lanes index several parallel arrays
use half::{bf16, f16};
use pref_kernels::runtime::emulator::{self, launch_kernel};
use pref_kernels::{DeviceBuffer, EmulatorChecks, Error, Stream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[repr(C)]
#[derive(Clone, Copy)]
struct EmuTestParams {
    input: u64,
    out: u64,
    n: i64,
    mode: i64,
}

fn params<A, B>(input: &DeviceBuffer<A>, out: &DeviceBuffer<B>, n: usize, mode: i64) -> EmuTestParams {
    EmuTestParams { input: input.raw_ptr(), out: out.raw_ptr(), n: n as i64, mode }
}

fn run(name: &str, block: u32, p: &EmuTestParams) -> pref_kernels::Result<()> {
    // SAFETY: p holds emulator allocations sized as each self-test kernel documents; memcheck is on.
    unsafe { launch_kernel(name, [1, 1, 1], [block, 1, 1], 0, p, EmulatorChecks::ALL) }
}

fn report_of(r: pref_kernels::Result<()>) -> String {
    match r {
        Err(Error::KernelCheck(s)) => s,
        other => panic!("expected a kernel-check report, got {other:?}"),
    }
}

fn skip_without_emulator() -> bool {
    if !emulator::built() {
        assert!(
            std::env::var("PREF_KERNELS_REQUIRE_NVCC").map(|v| v != "1").unwrap_or(true),
            "PREF_KERNELS_REQUIRE_NVCC=1 but the emulator was not built"
        );
        println!("SKIPPED: this build has no emulator (no CUDA headers at build time)");
        return true;
    }
    false
}

#[test]
fn every_registry_kernel_has_an_emulated_twin() {
    if skip_without_emulator() {
        return;
    }
    let names = emulator::kernel_names();
    for k in pref_kernels::runtime::registry::kernels() {
        assert!(names.contains(&k.name), "{} is not emulated", k.name);
    }
}

#[test]
fn memcheck_reports_a_read_past_the_end() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let input = s.clone_htod(&[1.0f32; 32]).unwrap();
    let out = s.alloc_zeros::<f32>(32).unwrap();
    run("emu_test_copy", 32, &params(&input, &out, 32, 0)).unwrap();
    assert_eq!(s.clone_dtoh(&out).unwrap(), vec![1.0f32; 32]);
    let rep = report_of(run("emu_test_copy", 32, &params(&input, &out, 32, 1)));
    assert!(rep.contains("[memcheck]") && rep.contains("invalid global read of 4 bytes"), "{rep}");
    assert!(rep.contains("kernel `emu_test_copy`, block (0,0,0), thread (31,0,0)"), "{rep}");
    assert!(rep.contains(&format!("{:#x}", input.raw_ptr() + 128)), "{rep}");
    assert!(rep.contains("0 bytes past the end of the 128-byte allocation"), "{rep}");
}

#[test]
fn memcheck_reports_misaligned_and_host_pointers() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let input = s.clone_htod(&[2.0f32; 16]).unwrap();
    let out = s.alloc_zeros::<f32>(1).unwrap();
    let rep = report_of(run("emu_test_global", 32, &params(&input, &out, 16, 1)));
    assert!(rep.contains("misaligned global read of 16 bytes"), "{rep}");
    // A host pointer the emulator did not allocate is not device memory.
    let host = [0.0f32; 16];
    let p = EmuTestParams { input: host.as_ptr() as u64, out: out.raw_ptr(), n: 16, mode: 0 };
    let rep = report_of(run("emu_test_copy", 16, &p));
    assert!(rep.contains("invalid global read"), "{rep}");
}

#[test]
fn initcheck_reports_never_written_global_and_shared_memory() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let input = DeviceBuffer::<f32>::emulator_uninitialized(4).unwrap();
    let out = s.alloc_zeros::<f32>(64).unwrap();
    let rep = report_of(run("emu_test_global", 32, &params(&input, &out, 4, 0)));
    assert!(rep.contains("[initcheck]") && rep.contains("never written"), "{rep}");
    let rep = report_of(run("emu_test_shared", 64, &params(&out, &out, 64, 2)));
    assert!(rep.contains("[initcheck]") && rep.contains("uninitialized shared memory at offset 0"), "{rep}");
}

#[test]
fn racecheck_reports_a_missing_barrier_and_accepts_the_correct_kernel() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let out = s.alloc_zeros::<f32>(64).unwrap();
    run("emu_test_shared", 64, &params(&out, &out, 64, 0)).unwrap();
    let got = s.clone_dtoh(&out).unwrap();
    assert_eq!(got, (0..64).map(|t| ((t + 1) % 64) as f32).collect::<Vec<_>>());
    let rep = report_of(run("emu_test_shared", 64, &params(&out, &out, 64, 1)));
    // Threads run in order: thread 0 reads s[1] before thread 1 writes it.
    assert!(
        rep.contains("[racecheck]") && rep.contains("write-after-read hazard at shared offset 4"),
        "{rep}"
    );
    assert!(rep.contains("thread (1,0,0)") && rep.contains("read by thread 0"), "{rep}");
}

#[test]
fn memcheck_reports_a_write_past_a_shared_array() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let out = s.alloc_zeros::<f32>(64).unwrap();
    let rep = report_of(run("emu_test_shared", 64, &params(&out, &out, 64, 3)));
    assert!(rep.contains("invalid shared write of 4 bytes at offset 256"), "{rep}");
    assert!(rep.contains("thread (63,0,0)"), "{rep}");
}

#[test]
fn synccheck_reports_divergent_barriers_and_partial_warps_without_hanging() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let out = s.alloc_zeros::<f32>(64).unwrap();
    let rep = report_of(run("emu_test_sync", 32, &params(&out, &out, 64, 0)));
    assert!(rep.contains("[synccheck]") && rep.contains("__syncthreads"), "{rep}");
    let rep = report_of(run("emu_test_sync", 32, &params(&out, &out, 64, 1)));
    assert!(rep.contains("[synccheck]") && rep.contains("has exited"), "{rep}");
    let rep = report_of(run("emu_test_sync", 32, &params(&out, &out, 64, 2)));
    assert!(rep.contains("[synccheck]"), "{rep}");
}

#[test]
fn invalid_launches_are_refused() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let out = s.alloc_zeros::<f32>(64).unwrap();
    let p = params(&out, &out, 64, 0);
    // emu_test_warp has __launch_bounds__(32).
    let e = run("emu_test_warp", 64, &p).unwrap_err().to_string();
    assert!(e.contains("__launch_bounds__"), "{e}");
    let e = run("no_such_kernel", 32, &p).unwrap_err().to_string();
    assert!(e.contains("no emulated kernel named `no_such_kernel`"), "{e}");
    // SAFETY: a wrong-sized parameter block is rejected before anything runs.
    let e = unsafe { launch_kernel("emu_test_warp", [1, 1, 1], [32, 1, 1], 0, &0u32, EmulatorChecks::ALL) }
        .unwrap_err()
        .to_string();
    assert!(e.contains("parameter size"), "{e}");
}

#[test]
fn warp_shuffles_and_votes_match_their_definitions() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let mut rng = StdRng::seed_from_u64(7);
    let v: Vec<i32> = (0..32).map(|_| rng.random_range(0..2000)).collect();
    let input = s.clone_htod(&v).unwrap();
    let out = s.alloc_zeros::<i32>(32 * 8).unwrap();
    run("emu_test_warp", 32, &params(&input, &out, 32, 0)).unwrap();
    let got = s.clone_dtoh(&out).unwrap();
    let ballot = (0..32).filter(|&l| v[l] & 1 == 1).fold(0u32, |b, l| b | 1 << l) as i32;
    for lane in 0..32usize {
        let w = &got[lane * 8..lane * 8 + 8];
        assert_eq!(w[0], v[(lane * 7 + 3) % 32], "idx lane {lane}");
        assert_eq!(w[1], v[if lane >= 3 { lane - 3 } else { lane }], "up lane {lane}");
        assert_eq!(w[2], v[if lane + 5 < 32 { lane + 5 } else { lane }], "down lane {lane}");
        assert_eq!(w[3], v[lane ^ 6], "xor lane {lane}");
        assert_eq!(w[4], v[lane ^ 1], "xor width 8 lane {lane}");
        assert_eq!(w[5], ballot, "ballot");
        assert_eq!(w[6], v.iter().any(|&x| x > 1000) as i32, "any");
        assert_eq!(w[7], 1, "all");
    }
}

/// Builds the 32 lanes' registers of A (16x16 row-major), B (16x8) and C (16x8) from the PTX ISA
/// fragment tables for mma.m16n8k16 (independently of the emulator's implementation), runs one
/// mma.sync, and compares D with a plain f64 matrix product.
fn check_mma(bits: impl Fn(f32) -> (u16, f32), mode: i64) {
    let s = Stream::emulator();
    let mut rng = StdRng::seed_from_u64(11 + mode as u64);
    let mut a = [[0f32; 16]; 16];
    let mut abits = [[0u16; 16]; 16];
    let mut b = [[0f32; 8]; 16];
    let mut bbits = [[0u16; 8]; 16];
    let mut c = [[0f32; 8]; 16];
    for i in 0..16 {
        for k in 0..16 {
            (abits[i][k], a[i][k]) = bits(rng.random_range(-2.0..2.0));
        }
        for j in 0..8 {
            (bbits[i][j], b[i][j]) = bits(rng.random_range(-2.0..2.0));
            c[i][j] = rng.random_range(-1.0..1.0);
        }
    }
    let pack = |lo: u16, hi: u16| lo as u32 | (hi as u32) << 16;
    let mut regs = vec![0u32; 32 * 6 + 32 * 4];
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        // A: a0,a1 (row g, cols 2t, 2t+1); a2,a3 (row g+8); a4..a7 the same rows, cols + 8.
        regs[lane * 6] = pack(abits[g][2 * t], abits[g][2 * t + 1]);
        regs[lane * 6 + 1] = pack(abits[g + 8][2 * t], abits[g + 8][2 * t + 1]);
        regs[lane * 6 + 2] = pack(abits[g][2 * t + 8], abits[g][2 * t + 9]);
        regs[lane * 6 + 3] = pack(abits[g + 8][2 * t + 8], abits[g + 8][2 * t + 9]);
        // B: b0,b1 (rows k = 2t, 2t+1, col n = g); b2,b3 (rows 2t+8, 2t+9).
        regs[lane * 6 + 4] = pack(bbits[2 * t][g], bbits[2 * t + 1][g]);
        regs[lane * 6 + 5] = pack(bbits[2 * t + 8][g], bbits[2 * t + 9][g]);
        // C: c0,c1 (row g, cols 2t, 2t+1); c2,c3 (row g+8).
        for e in 0..4 {
            let (i, j) = (g + 8 * (e / 2), 2 * t + e % 2);
            regs[32 * 6 + lane * 4 + e] = c[i][j].to_bits();
        }
    }
    let input = s.clone_htod(&regs).unwrap();
    let out = s.alloc_zeros::<f32>(32 * 4).unwrap();
    run("emu_test_mma", 32, &params(&input, &out, regs.len(), mode)).unwrap();
    let d = s.clone_dtoh(&out).unwrap();
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for e in 0..4 {
            let (i, j) = (g + 8 * (e / 2), 2 * t + e % 2);
            let want: f64 = c[i][j] as f64 + (0..16).map(|k| a[i][k] as f64 * b[k][j] as f64).sum::<f64>();
            let got = d[lane * 4 + e] as f64;
            assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "D[{i}][{j}] = {got}, want {want}");
        }
    }
}

#[test]
fn mma_m16n8k16_bf16_matches_a_matrix_product() {
    if skip_without_emulator() {
        return;
    }
    check_mma(|x| (bf16::from_f32(x).to_bits(), bf16::from_f32(x).to_f32()), 0);
}

#[test]
fn mma_m16n8k16_f16_matches_a_matrix_product() {
    if skip_without_emulator() {
        return;
    }
    check_mma(|x| (f16::from_f32(x).to_bits(), f16::from_f32(x).to_f32()), 1);
}

/// ldmatrix m8n8.x{4,2}[.trans].b16 against the PTX ISA's definition, computed here independently
/// of the emulator: lanes 8j..8j+7 give the row addresses of matrix j (out of order in shared
/// memory); lane i receives in register j row i/4's elements 2(i%4), 2(i%4)+1 (or, transposed,
/// column i/4's elements of rows 2(i%4), 2(i%4)+1), the lower index in the low half. Then a
/// misaligned row address (memcheck) and an unwritten row (initcheck).
#[test]
fn ldmatrix_matches_the_ptx_fragment_layout() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let m: Vec<u16> = (0..256u16).map(|x| x.wrapping_mul(2654).wrapping_add(17)).collect();
    let input = s.clone_htod(&m).unwrap();
    let at = |j: usize, r: usize, c: usize| m[(j * 8 + r) * 8 + c] as u32;
    for (mode, num, trans) in [(0i64, 4usize, false), (1, 4, true), (2, 2, false), (3, 2, true)] {
        let out = s.alloc_zeros::<u32>(32 * 4).unwrap();
        run("emu_test_ldmatrix", 32, &params(&input, &out, 256, mode)).unwrap();
        let got = s.clone_dtoh(&out).unwrap();
        for lane in 0..32 {
            for j in 0..num {
                let (a, b) = (lane / 4, 2 * (lane % 4));
                let want = if trans {
                    at(j, b, a) | at(j, b + 1, a) << 16
                } else {
                    at(j, a, b) | at(j, a, b + 1) << 16
                };
                assert_eq!(got[lane * 4 + j], want, "mode {mode} lane {lane} reg {j}");
            }
        }
    }
    let out = s.alloc_zeros::<u32>(32 * 4).unwrap();
    let rep = report_of(run("emu_test_ldmatrix", 32, &params(&input, &out, 256, 4)));
    assert!(rep.contains("[memcheck]") && rep.contains("lane 5 is not 16-byte aligned"), "{rep}");
    let rep = report_of(run("emu_test_ldmatrix", 32, &params(&input, &out, 256, 5)));
    assert!(rep.contains("[initcheck]") && rep.contains("uninitialized shared memory"), "{rep}");
}

/// An ldmatrix.x4 of a 16x16 row-major tile gives exactly mma.m16n8k16's A fragment (what the
/// attention kernels rely on): matrix 0 = rows 0-7 / cols 0-7, 1 = rows 8-15 / cols 0-7, 2 = rows
/// 0-7 / cols 8-15, 3 = rows 8-15 / cols 8-15, compared with the fragment table check_mma uses.
#[test]
fn ldmatrix_x4_of_a_tile_is_the_mma_a_fragment() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let tile: Vec<u16> = (0..256u16).map(|x| x.wrapping_mul(40503)).collect();
    // Lay the tile's four 8x8 quadrants out as the kernel's matrices j = 0..3.
    let mut m = vec![0u16; 256];
    for j in 0..4 {
        for r in 0..8 {
            for c in 0..8 {
                let (row, col) = (r + 8 * (j % 2), c + 8 * (j / 2));
                m[(j * 8 + r) * 8 + c] = tile[row * 16 + col];
            }
        }
    }
    let input = s.clone_htod(&m).unwrap();
    let out = s.alloc_zeros::<u32>(32 * 4).unwrap();
    run("emu_test_ldmatrix", 32, &params(&input, &out, 256, 0)).unwrap();
    let got = s.clone_dtoh(&out).unwrap();
    let a = |i: usize, k: usize| tile[i * 16 + k] as u32;
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        let want = [
            a(g, 2 * t) | a(g, 2 * t + 1) << 16,
            a(g + 8, 2 * t) | a(g + 8, 2 * t + 1) << 16,
            a(g, 2 * t + 8) | a(g, 2 * t + 9) << 16,
            a(g + 8, 2 * t + 8) | a(g + 8, 2 * t + 9) << 16,
        ];
        assert_eq!(&got[lane * 4..lane * 4 + 4], &want, "lane {lane}");
    }
}

/// cp.async: two committed groups, wait_group 1 completes the first only, wait_group 0 the
/// second; zero-fill; then a read of a copy still in flight (initcheck), a read of another
/// thread's copy without a barrier (racecheck), and a source past its allocation (memcheck).
#[test]
fn cp_async_groups_land_in_order_and_early_reads_are_caught() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let v: Vec<u32> = (0..256u32).map(|x| x * 7 + 1).collect();
    let input = s.clone_htod(&v).unwrap();
    let out = s.alloc_zeros::<u32>(64 * 4).unwrap();
    run("emu_test_cp_async", 32, &params(&input, &out, 256, 0)).unwrap();
    let got = s.clone_dtoh(&out).unwrap();
    for t in 0..32 {
        let n = (t + 1) % 32;
        assert_eq!(&got[t * 4..t * 4 + 4], &v[n * 4..n * 4 + 4], "buffer 0, thread {t}");
        let want: Vec<u32> = if n == 3 { vec![0; 4] } else { v[(32 + n) * 4..(32 + n) * 4 + 4].to_vec() };
        assert_eq!(&got[(32 + t) * 4..(32 + t) * 4 + 4], &want[..], "buffer 1, thread {t}");
    }
    let rep = report_of(run("emu_test_cp_async", 32, &params(&input, &out, 256, 1)));
    assert!(rep.contains("[initcheck]") && rep.contains("uninitialized shared memory"), "{rep}");
    let rep = report_of(run("emu_test_cp_async", 32, &params(&input, &out, 256, 2)));
    // Thread 0 reads row 1 before thread 1 has even issued its copy (the emulator runs a warp's
    // threads one after another up to a barrier): both the hazard and the unlanded bytes show.
    assert!(rep.contains("[racecheck]") && rep.contains("hazard at shared offset 16"), "{rep}");
    let rep = report_of(run("emu_test_cp_async", 32, &params(&input, &out, 256, 3)));
    assert!(rep.contains("[memcheck]") && rep.contains("invalid global read of 16 bytes"), "{rep}");
}

/// A real kernel through the raw API, told there are more rows than the buffers hold: memcheck
/// stops it at the first access past the logits and names the kernel, block and thread.
#[test]
fn memcheck_catches_a_raw_api_caller_overstating_the_rows() {
    if skip_without_emulator() {
        return;
    }
    use pref_kernels::token_logprobs::TokenLogprobsFwdPtrs;
    use pref_kernels::{DType, Gpu, IndexType, LogitsLayout, TokenLogprobsConfig};
    let gpu = Gpu::emulator_with(EmulatorChecks::ALL).unwrap();
    let s = gpu.default_stream();
    let (rows, vocab) = (4usize, 3000usize);
    let logits = s.clone_htod(&vec![half::bf16::from_f32(0.5); rows * vocab]).unwrap();
    let targets = s.clone_htod(&[1i64, 2, 3, 4, 5]).unwrap();
    let logp = s.alloc_zeros::<f32>(5).unwrap();
    let lse = s.alloc_zeros::<f32>(5).unwrap();
    let ptrs = TokenLogprobsFwdPtrs {
        logits: logits.raw_ptr(),
        targets: targets.raw_ptr(),
        logp: logp.raw_ptr(),
        lse: lse.raw_ptr(),
        entropy: 0,
        status: 0,
        stats: 0,
        log_sum_sq: 0,
        mean_logits: 0,
        is_top1: 0,
    };
    // SAFETY: deliberately violates the contract (5 rows of logits, 4 allocated); the emulator's
    // memcheck stops the kernel before any access outside its allocations.
    let r = unsafe {
        gpu.token_logprobs_forward_raw(
            0,
            DType::BF16,
            IndexType::I64,
            LogitsLayout::contiguous(5, vocab),
            &ptrs,
            &TokenLogprobsConfig::default(),
        )
    };
    let rep = report_of(r);
    assert!(rep.contains("[memcheck]") && rep.contains("kernel `token_logprobs_fwd_bf16_i64_w256`"), "{rep}");
    assert!(
        rep.contains("block (4,0,0)") && rep.contains("past the end of the 24000-byte allocation"),
        "{rep}"
    );
}

/// The warp patterns an independent review found mishandled: disjoint lane groups with their own
/// masks (and a vote that must not clobber pending results), CUDA's xor-width and delta rules,
/// shared memory ordered by __syncwarp, and an access straddling the start of shared memory.
#[test]
fn warp_groups_widths_syncwarp_and_shared_underflow() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let out = s.alloc_zeros::<i32>(64).unwrap();
    run("emu_test_warp2", 32, &params(&out, &out, 64, 0)).unwrap();
    let got = s.clone_dtoh(&out).unwrap();
    for lane in 0..32usize {
        let want = if lane < 16 { lane ^ 1 ^ 2 } else { lane ^ 4 };
        assert_eq!(got[lane], want as i32, "lane {lane}");
    }
    assert_eq!(got[32] as u32, 0x8000_0000, "ballot of lane 31 alone");
    run("emu_test_warp2", 32, &params(&out, &out, 64, 1)).unwrap();
    let got = s.clone_dtoh(&out).unwrap();
    for lane in 0..32usize {
        // width 16, lane mask 16: lanes 16..31 read the earlier group; lanes 0..15 would read a
        // later group and keep their own value.
        assert_eq!(got[lane], if lane >= 16 { lane as i32 - 16 } else { lane as i32 }, "xor lane {lane}");
        assert_eq!(got[32 + lane], if lane < 31 { lane as i32 + 1 } else { 31 }, "down lane {lane}");
    }
    run("emu_test_warp2", 32, &params(&out, &out, 64, 2)).unwrap();
    let got = s.clone_dtoh(&out).unwrap();
    assert_eq!(&got[..32], &(0..32).map(|l: i32| (l ^ 1) * 3).collect::<Vec<_>>()[..]);
    let rep = report_of(run("emu_test_warp2", 32, &params(&out, &out, 64, 3)));
    assert!(rep.contains("2 bytes before shared memory"), "{rep}");
}

/// A spin-wait is reported, not a hang; and bytes written under any check setting count as
/// initialized for a later initcheck.
#[test]
fn spin_waits_are_reported_and_init_state_survives_check_settings() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let out = s.alloc_zeros::<f32>(4).unwrap();
    let rep = report_of(run("emu_test_global", 32, &params(&out, &out, 4, 2)));
    assert!(rep.contains("[synccheck]") && rep.contains("spin-wait"), "{rep}");
    let input = s.clone_htod(&[5.0f32; 32]).unwrap();
    let fresh = DeviceBuffer::<f32>::emulator_uninitialized(32).unwrap();
    let racecheck_only = EmulatorChecks { racecheck: true, ..EmulatorChecks::NONE };
    // SAFETY: emulator allocations of 32 floats each.
    unsafe {
        launch_kernel(
            "emu_test_copy",
            [1, 1, 1],
            [32, 1, 1],
            0,
            &params(&input, &fresh, 32, 0),
            racecheck_only,
        )
    }
    .unwrap();
    let out1 = s.alloc_zeros::<f32>(1).unwrap();
    run("emu_test_global", 32, &params(&fresh, &out1, 32, 0)).unwrap();
    assert_eq!(s.clone_dtoh(&out1).unwrap(), vec![5.0]);
}

/// wgmma.mma_async m64nNk16 (A in registers or, SS form, by descriptor; B by a no-swizzle
/// descriptor, K-major and MN-major) against a plain f64 matrix product: the test kernel builds each thread's fragments
/// and B's core-matrix placement from the PTX ISA's tables (which CUTLASS's CuTe layouts
/// `ALayout_64x16`, `CLayout_64xN` and `make_gmma_desc` agree with), with byte offsets other than
/// the attention kernel's. Then the planted faults: no proxy fence, D read before the wait, no
/// wgmma.fence, B overwritten in flight, warps of one warpgroup disagreeing or one missing, an
/// accumulator written in flight, and scale-d = 0.
#[test]
fn wgmma_matches_a_matrix_product_and_its_faults_are_caught() {
    if skip_without_emulator() {
        return;
    }
    let s = Stream::emulator();
    let run_case = |mode: i64, seed: u64| -> (pref_kernels::Result<()>, Vec<f32>, Vec<f64>, Vec<f64>) {
        let n = if mode & 8 != 0 {
            32
        } else if mode & 4 != 0 {
            128
        } else {
            64
        };
        let to = |x: f32| -> (u16, f32) {
            if mode & 1 != 0 {
                (f16::from_f32(x).to_bits(), f16::from_f32(x).to_f32())
            } else {
                (bf16::from_f32(x).to_bits(), bf16::from_f32(x).to_f32())
            }
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut a, mut b) = (vec![0f64; 64 * 16], vec![0f64; 16 * n]);
        let mut words: Vec<u16> = Vec::new();
        for v in a.iter_mut() {
            let (bits, x) = to(rng.random_range(-2.0..2.0));
            words.push(bits);
            *v = x as f64;
        }
        for v in b.iter_mut() {
            let (bits, x) = to(rng.random_range(-2.0..2.0));
            words.push(bits);
            *v = x as f64;
        }
        let c: Vec<f32> = (0..64 * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend(c.iter().flat_map(|x| x.to_le_bytes()));
        let input = s.clone_htod(&bytes).unwrap();
        let out = s.alloc_zeros::<f32>(64 * n).unwrap();
        let r = run("emu_test_wgmma", 128, &params(&input, &out, bytes.len(), mode));
        let d = s.clone_dtoh(&out).unwrap();
        let want: Vec<f64> = (0..64 * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                (0..16).map(|k| a[i * 16 + k] * b[k * n + j]).sum::<f64>()
            })
            .collect();
        (r, d, want, c.iter().map(|&x| x as f64).collect())
    };
    // bf16/f16 x K-/MN-major B x N = 64, 128 (A in registers), then N = 32 with A in shared memory.
    for mode in (0..8).chain(8..12) {
        let (r, d, want, c) = run_case(mode, 40 + mode as u64);
        r.unwrap();
        for (e, (&got, (&w, &c))) in d.iter().zip(want.iter().zip(&c)).enumerate() {
            let w = w + c;
            assert!(
                (got as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "mode {mode}: D[{e}] = {got}, want {w}"
            );
        }
    }
    // scale-d = 0: D = A B.
    let (r, d, want, _) = run_case(6 << 8 | 2, 7);
    r.unwrap();
    for (e, (&got, &w)) in d.iter().zip(&want).enumerate() {
        assert!((got as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()), "scale-d 0: D[{e}] = {got}, want {w}");
    }
    // D read before the wait: the registers read as NaN (on a GPU: undefined).
    let (r, d, _, _) = run_case(2 << 8 | 8, 8);
    r.unwrap();
    assert!(d.iter().all(|x| x.is_nan()), "accumulators read before wgmma.wait_group must read as NaN");
    for (fault, checker, what) in [
        (1, "synccheck", "fence.proxy.async"),
        (3, "synccheck", "wgmma.fence"),
        (4, "racecheck", "shared offset"),
        (5, "synccheck", "differs from its warpgroup"),
        (7, "synccheck", "warp 1 issued 0 wgmma.mma_async"),
        (8, "synccheck", "written before its wgmma.wait_group"),
    ] {
        let rep = report_of(run_case(fault << 8 | 4, 9).0);
        assert!(rep.contains(checker) && rep.contains(what), "fault {fault}: {rep}");
        assert!(rep.contains("emu_test_wgmma"), "{rep}");
    }
}
