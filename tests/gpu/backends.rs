//! Cross-backend test: on a machine with a GPU, the emulator and the GPU run the same kernels on
//! the same inputs and agree within the f32 tolerances of the parity tests (bitwise equality is
//! not expected: the GPU's exp2/log2/rcp are hardware approximations and mma sums in its own
//! order).
use half::bf16;
use pref_kernels::token_logprobs::TokenLogprobsOutputs;
use pref_kernels::{BackendKind, Gpu, LogitsLayout, TokenLogprobsConfig};
use rand::Rng;

use crate::common::{assert_close, logits as random_logits, rng};
use crate::Case;

fn token_logprobs_on(
    gpu: &Gpu,
    host: &[bf16],
    targets: &[i64],
    layout: LogitsLayout,
) -> (Vec<f32>, Vec<f32>) {
    let s = gpu.default_stream();
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let logits = s.clone_htod(host).unwrap();
    let t = s.clone_htod(targets).unwrap();
    let n = layout.n_rows;
    let (mut logp, mut lse, mut ent) = (
        s.alloc_zeros::<f32>(n).unwrap(),
        s.alloc_zeros::<f32>(n).unwrap(),
        s.alloc_zeros::<f32>(n).unwrap(),
    );
    let out = TokenLogprobsOutputs {
        logp: logp.as_view_mut(),
        lse: lse.as_view_mut(),
        entropy: Some(ent.as_view_mut()),
        stats: None,
        log_sum_sq: None,
        mean_logits: None,
        is_top1: None,
    };
    gpu.token_logprobs_forward(&s, &logits, layout, &t, out, &cfg).unwrap();
    (s.clone_dtoh(&logp).unwrap(), s.clone_dtoh(&ent).unwrap())
}

fn emulator_matches_the_gpu(gpu: &Gpu, seed: u64) {
    assert!(gpu.backend() == BackendKind::Cuda, "runs on the CUDA pass only");
    // Opened here even when this run's backends exclude it (PREF_KERNELS_BACKEND=cuda).
    let emu = Gpu::emulator().expect("the emulator is needed for the cross-backend comparison");
    let mut r = rng(seed, 0xC0FFEE);
    for vocab in [7usize, 1000, 32001, 151936] {
        let n = 8;
        let layout = LogitsLayout::contiguous(n, vocab);
        let host: Vec<bf16> = random_logits(&mut r, n * vocab).into_iter().map(bf16::from_f32).collect();
        let targets: Vec<i64> = (0..n).map(|_| r.random_range(0..vocab as i64)).collect();
        let (a, ea) = token_logprobs_on(gpu, &host, &targets, layout);
        let (b, eb) = token_logprobs_on(&emu, &host, &targets, layout);
        for i in 0..n {
            assert_close(
                &format!("V={vocab} logp[{i}] gpu vs emulator"),
                a[i] as f64,
                b[i] as f64,
                2e-4,
                1e-5,
            );
            assert_close(
                &format!("V={vocab} entropy[{i}] gpu vs emulator"),
                ea[i] as f64,
                eb[i] as f64,
                5e-4,
                1e-4,
            );
        }
    }
}

/// Calls from a thread that never touched the device (PyTorch runs the backward on its own
/// thread): every entry point binds the context itself. The stand-in driver refuses any driver
/// call without a current context, as the real one does, so an unbound copy, memset, launch or
/// GEMM fails here; the results equal the calling thread's bitwise.
fn calls_from_a_fresh_thread(gpu: &Gpu, seed: u64) {
    let mut r = rng(seed, 0x7EAD);
    let layout = LogitsLayout::contiguous(6, 300);
    let host: Vec<bf16> = random_logits(&mut r, 6 * 300).into_iter().map(bf16::from_f32).collect();
    let targets: Vec<i64> = (0..6).map(|_| r.random_range(0..300)).collect();
    let here = token_logprobs_on(gpu, &host, &targets, layout);
    let hidden: Vec<f32> = (0..6 * 16).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let weight: Vec<f32> = (0..300 * 16).map(|_| r.random_range(-0.3f32..0.3)).collect();
    let head_logp = |gpu: &Gpu| {
        use pref_kernels::linear_token_logprobs::{LinearConfig, LinearHead, LinearShape};
        let s = gpu.new_stream().unwrap();
        let (h, w, t) =
            (s.clone_htod(&hidden).unwrap(), s.clone_htod(&weight).unwrap(), s.clone_htod(&targets).unwrap());
        let head = LinearHead {
            hidden: h.as_view(),
            weight: w.as_view(),
            bias: None,
            shape: LinearShape { n_rows: 6, hidden: 16, vocab: 300 },
        };
        let out =
            gpu.linear_token_logprobs_forward(&s, &head, &t.as_view(), &LinearConfig::default()).unwrap();
        s.clone_dtoh(&out.logp).unwrap()
    };
    let head_here = head_logp(gpu);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if gpu.backend() == BackendKind::Cuda {
                    // The scenario is real: a new thread starts with no current context.
                    let mut current = std::ptr::null_mut();
                    // SAFETY: writes one handle; the driver is initialized (the device is open).
                    let rc = unsafe { cudarc::driver::sys::cuCtxGetCurrent(&mut current) };
                    assert!(rc == cudarc::driver::sys::CUresult::CUDA_SUCCESS && current.is_null());
                }
                assert_eq!(token_logprobs_on(gpu, &host, &targets, layout), here, "token log-probs");
                assert_eq!(head_logp(gpu), head_here, "fused head (GEMMs)");
            })
            .join()
            .expect("the calls from a fresh thread failed");
    });
}

/// The C ABI puts the calling thread's current context back: a PyTorch thread working on one
/// device that calls an op on another is not moved to it. Called from a fresh thread (no current
/// context): after the call there still is none (on the emulator, nothing to check).
fn c_abi_restores_the_callers_context(gpu: &Gpu, seed: u64) {
    if gpu.backend() != BackendKind::Cuda {
        return;
    }
    use cudarc::driver::sys;
    use pref_kernels::ffi::{prefk_token_logprobs_forward, PrefkTokenLogprobsForwardArgs};
    let mut r = rng(seed, 0xC7);
    let s = gpu.default_stream();
    let host: Vec<f32> = (0..4 * 50).map(|_| r.random_range(-3.0f32..3.0)).collect();
    let logits = s.clone_htod(&host).unwrap();
    let targets = s.clone_htod(&[1i64, 2, 3, 4]).unwrap();
    let (logp, lse) = (s.alloc_zeros::<f32>(4).unwrap(), s.alloc_zeros::<f32>(4).unwrap());
    let args = PrefkTokenLogprobsForwardArgs {
        device: 0,
        logits: logits.raw_ptr(),
        targets: targets.raw_ptr(),
        logp: logp.raw_ptr(),
        lse: lse.raw_ptr(),
        n_rows: 4,
        vocab: 50,
        row_stride: 50,
        ignore_index: -100,
        dtype_code: 0,
        index_code: 1,
        temperature: 1.0,
        ..PrefkTokenLogprobsForwardArgs::new()
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let current = || {
                    let mut c = std::ptr::null_mut();
                    // SAFETY: writes one handle; the driver is initialized.
                    assert_eq!(unsafe { sys::cuCtxGetCurrent(&mut c) }, sys::CUresult::CUDA_SUCCESS);
                    c
                };
                assert!(current().is_null());
                // SAFETY: device pointers of this device, sized for the shapes given.
                assert_eq!(unsafe { prefk_token_logprobs_forward(&args) }, 0);
                assert!(current().is_null(), "the op left its context current on the caller's thread");
            })
            .join()
            .expect("the C ABI call from a fresh thread failed");
    });
    let got = s.clone_dtoh(&logp).unwrap();
    assert!(got.iter().all(|x| x.is_finite() && *x < 0.0), "{got:?}");
}

/// A kernel that faults leaves a sticky error that a GPU reports only at a later call, without a
/// name; with `PREF_KERNELS_SYNC_LAUNCHES=1` the launch reports it with the kernel's name. Runs on
/// the stand-in driver only (a real GPU's context does not survive the fault: the stand-in's
/// test-only hook clears it afterwards).
fn sticky_errors_name_the_kernel(gpu: &Gpu, _seed: u64) {
    if !crate::is_standin(gpu) {
        return;
    }
    use pref_kernels::token_logprobs::TokenLogprobsFwdPtrs;
    use pref_kernels::{DType, Error, IndexType};
    std::env::set_var("PREF_KERNELS_SYNC_LAUNCHES", "1");
    let checked = Gpu::new(0);
    std::env::remove_var("PREF_KERNELS_SYNC_LAUNCHES");
    let checked = checked.unwrap();
    let s = checked.default_stream();
    // 4 targets allocated, 5 rows launched: the kernel reads past the targets' allocation.
    let logits = s.clone_htod(&vec![bf16::from_f32(0.5); 5 * 3000]).unwrap();
    let targets = s.clone_htod(&[1i64, 2, 3, 4]).unwrap();
    let (logp, lse) = (s.alloc_zeros::<f32>(5).unwrap(), s.alloc_zeros::<f32>(5).unwrap());
    let ptrs = TokenLogprobsFwdPtrs {
        logits: logits.raw_ptr(),
        targets: targets.raw_ptr(),
        logp: logp.raw_ptr(),
        lse: lse.raw_ptr(),
        ..Default::default()
    };
    let layout = LogitsLayout::contiguous(5, 3000);
    let cfg = TokenLogprobsConfig::default();
    // SAFETY: deliberately violates the contract (5 rows, 4 targets); the stand-in's memcheck stops
    // the kernel before the access.
    let r =
        unsafe { checked.token_logprobs_forward_raw(0, DType::BF16, IndexType::I64, layout, &ptrs, &cfg) };
    let clear = standin_hook(c"prefk_standin_clear_sticky_error");
    // SAFETY: the stand-in's hook takes no arguments.
    unsafe { std::mem::transmute::<*mut std::ffi::c_void, extern "C" fn()>(clear)() };
    match r {
        Err(Error::Launch { kernel, .. }) => assert!(kernel.starts_with("token_logprobs_fwd"), "{kernel}"),
        other => panic!("expected the fault named by its kernel, got {other:?}"),
    }
}

/// A GPU older than sm_80 is refused when the handle is opened, with its compute capability
/// (the stand-in driver pretends to be a 7.5 part; a real GPU is what it is).
fn old_gpus_are_refused_up_front(gpu: &Gpu, _seed: u64) {
    if !crate::is_standin(gpu) {
        return;
    }
    std::env::set_var("PREFK_STANDIN_CC", "75");
    let r = Gpu::new(0);
    std::env::remove_var("PREFK_STANDIN_CC");
    match r {
        Err(e @ pref_kernels::Error::UnsupportedDevice { major: 7, minor: 5 }) => {
            assert!(e.to_string().contains("8.0"), "{e}")
        }
        other => panic!("expected the 7.5 part refused, got {other:?}"),
    }
}

/// A test-only entry point of the loaded stand-in driver.
fn standin_hook(name: &std::ffi::CStr) -> *mut std::ffi::c_void {
    extern "C" {
        fn dlopen(name: *const std::ffi::c_char, flags: i32) -> *mut std::ffi::c_void;
        fn dlsym(h: *mut std::ffi::c_void, name: *const std::ffi::c_char) -> *mut std::ffi::c_void;
    }
    // SAFETY: RTLD_NOLOAD (4) | RTLD_LAZY (1) only finds the already loaded stand-in.
    unsafe {
        let h = dlopen(c"libcuda.so.1".as_ptr(), 4 | 1);
        assert!(!h.is_null(), "the stand-in driver is loaded");
        let f = dlsym(h, name.as_ptr());
        assert!(!f.is_null(), "the stand-in exports {name:?}");
        f
    }
}

/// The stand-in's counters: host waits, host-to-device copies, allocations, cuBLAS handles,
/// cross-stream event waits.
fn standin_counters() -> [u64; 5] {
    let f = standin_hook(c"prefk_standin_counters");
    let mut out = [0u64; 5];
    // SAFETY: the hook writes five u64.
    unsafe { std::mem::transmute::<*mut std::ffi::c_void, extern "C" fn(*mut u64)>(f)(out.as_mut_ptr()) };
    out
}

/// The stream-ordered fused head (forward and backward) neither waits on the host nor allocates
/// nor uploads, counted by the stand-in driver; the host-planned loop does all three (the
/// negative control that shows the counters see them). Each stream gets one cuBLAS handle, and a
/// stream captured into a CUDA graph before its first GEMM takes a spare one: the capture
/// succeeds (the planned loop's is invalidated) and gives the eager results.
fn stream_ordered_head_captures_without_waits_or_allocations(gpu: &Gpu, seed: u64) {
    use pref_kernels::linear_token_logprobs::{
        ordered_workspace_bytes, LinearConfig, LinearForwardViews, LinearGradViews, LinearHead, LinearShape,
        OrderedWorkspace,
    };
    if !crate::is_standin(gpu) {
        return;
    }
    let (n, h, v) = (23usize, 16usize, 90usize);
    let shape = LinearShape { n_rows: n, hidden: h, vocab: v };
    let mut r = rng(seed, 41);
    let s = gpu.default_stream();
    let hidden = s.clone_htod(&(0..n * h).map(|_| r.random_range(-1.0f32..1.0)).collect::<Vec<_>>()).unwrap();
    let weight = s.clone_htod(&(0..v * h).map(|_| r.random_range(-0.3f32..0.3)).collect::<Vec<_>>()).unwrap();
    let targets = s
        .clone_htod(&(0..n).map(|i| if i % 5 == 0 { -100 } else { (i * 7 % v) as i64 }).collect::<Vec<_>>())
        .unwrap();
    let gl = s.clone_htod(&vec![0.5f32; n]).unwrap();
    let head = LinearHead { hidden: hidden.as_view(), weight: weight.as_view(), bias: None, shape };
    let (mut logp, mut lse) = (s.alloc_zeros::<f32>(n).unwrap(), s.alloc_zeros::<f32>(n).unwrap());
    let (mut dh, mut dw) = (s.alloc_zeros::<f32>(n * h).unwrap(), s.alloc_zeros::<f32>(v * h).unwrap());
    let mut work =
        s.alloc_zeros::<u8>(ordered_workspace_bytes(&shape, pref_kernels::DType::F32, 6).unwrap()).unwrap();
    let mut status = s.alloc_zeros::<u32>(1).unwrap();
    let token = TokenLogprobsConfig::default();
    let mut step_chunks = |logp: &mut pref_kernels::DeviceBuffer<f32>,
                           lse: &mut pref_kernels::DeviceBuffer<f32>,
                           dh: &mut pref_kernels::DeviceBuffer<f32>,
                           dw: &mut pref_kernels::DeviceBuffer<f32>,
                           chunks: usize| {
        let out = LinearForwardViews::new(logp.as_view_mut(), lse.as_view_mut(), None);
        let ws = OrderedWorkspace { workspace: work.as_view_mut(), status: Some(status.as_view_mut()) };
        let run = gpu
            .linear_token_logprobs_forward_ordered(&s, &head, &targets.as_view(), out, ws, &token)
            .unwrap();
        assert_eq!(run.n_chunks, chunks);
        let grads = LinearGradViews { d_hidden: dh.as_view_mut(), d_weight: dw.as_view_mut(), d_bias: None };
        let ws = OrderedWorkspace { workspace: work.as_view_mut(), status: Some(status.as_view_mut()) };
        gpu.linear_token_logprobs_backward_ordered(
            &s,
            &head,
            &targets.as_view(),
            &gl.as_view(),
            None,
            grads,
            ws,
            &token,
        )
        .unwrap();
    };
    step_chunks(&mut logp, &mut lse, &mut dh, &mut dw, 4); // first use: modules, cuBLAS handle, side lane
    let before = standin_counters();
    step_chunks(&mut logp, &mut lse, &mut dh, &mut dw, 4);
    let after = standin_counters();
    assert_eq!(
        after[..4],
        before[..4],
        "[host waits, uploads, allocations, handles] of the stream-ordered head"
    );
    // The workspace holds two slots of 6 rows, so the 4 chunks alternate between them and the row
    // passes run on the side stream: the forward hands each chunk over (4 waits), waits for a
    // slot's drain before refilling it (chunks 3 and 4) and joins at the end (1); the backward
    // hands each chunk over (4) and waits for each drain before the chunk's weight GEMMs (4).
    assert_eq!(after[4] - before[4], 4 + 2 + 1 + 4 + 4, "cross-stream hand-offs of the two loops");
    // PREF_KERNELS_HEAD_STREAMS=1: one stream (no hand-offs), chunks of twice the rows, the same bits.
    let (logp_two, dw_two) = (s.clone_dtoh(&logp).unwrap(), s.clone_dtoh(&dw).unwrap());
    std::env::set_var("PREF_KERNELS_HEAD_STREAMS", "1");
    let (mut logp1, mut lse1) = (s.alloc_zeros::<f32>(n).unwrap(), s.alloc_zeros::<f32>(n).unwrap());
    let (mut dh1, mut dw1) = (s.alloc_zeros::<f32>(n * h).unwrap(), s.alloc_zeros::<f32>(v * h).unwrap());
    let before_one = standin_counters();
    let one = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        step_chunks(&mut logp1, &mut lse1, &mut dh1, &mut dw1, 2)
    }));
    std::env::remove_var("PREF_KERNELS_HEAD_STREAMS");
    one.unwrap();
    assert_eq!(standin_counters()[4], before_one[4], "no cross-stream waits on one stream");
    assert_eq!(s.clone_dtoh(&logp1).unwrap(), logp_two, "one stream or two: the same log-probs");
    // d_weight sums its chunks in row order either way, but over chunks of other sizes (f32
    // partial sums rounded at other places): equal to f32 rounding of the largest entry.
    let scale = dw_two.iter().fold(0f32, |a, x| a.max(x.abs())) as f64;
    for (i, (a, b)) in s.clone_dtoh(&dw1).unwrap().iter().zip(&dw_two).enumerate() {
        assert_close(&format!("d_weight[{i}], one stream vs two"), *a as f64, *b as f64, 1e-6 * scale, 0.0);
    }
    let planned = LinearConfig::default();
    gpu.linear_token_logprobs_forward(&s, &head, &targets.as_view(), &planned).unwrap();
    let after = standin_counters();
    assert!(
        (0..3).all(|i| after[i] > before[i]),
        "the host-planned loop waits, uploads and allocates: {after:?} vs {before:?}"
    );
    assert_eq!(s.clone_dtoh(&status).unwrap(), [0]);

    // Each stream gets its own cuBLAS handle (its own workspace), once.
    let other = gpu.new_stream().unwrap();
    let (mut logp2, mut lse2) = (other.alloc_zeros::<f32>(n).unwrap(), other.alloc_zeros::<f32>(n).unwrap());
    let mut work2 = other
        .alloc_zeros::<u8>(ordered_workspace_bytes(&shape, pref_kernels::DType::F32, 6).unwrap())
        .unwrap();
    let handles = standin_counters()[3];
    for _ in 0..2 {
        let out = LinearForwardViews::new(logp2.as_view_mut(), lse2.as_view_mut(), None);
        let ws = OrderedWorkspace { workspace: work2.as_view_mut(), status: None };
        gpu.linear_token_logprobs_forward_ordered(&other, &head, &targets.as_view(), out, ws, &token)
            .unwrap();
    }
    assert_eq!(standin_counters()[3], handles + 1, "one new cuBLAS handle for the new stream");
    assert_eq!(other.clone_dtoh(&logp2).unwrap(), s.clone_dtoh(&logp).unwrap(), "same rows, either stream");

    // Captured into a CUDA graph on a stream that never ran a GEMM (its handle is the spare made
    // ahead; the stand-in refuses synchronous work, allocation and handle creation in a capture).
    use cudarc::driver::sys;
    let cap = gpu.new_stream().unwrap();
    let (mut logp3, mut lse3) = (cap.alloc_zeros::<f32>(n).unwrap(), cap.alloc_zeros::<f32>(n).unwrap());
    let (mut dh3, mut dw3) = (cap.alloc_zeros::<f32>(n * h).unwrap(), cap.alloc_zeros::<f32>(v * h).unwrap());
    let capture = |f: &mut dyn FnMut() -> pref_kernels::Result<()>| {
        let raw = cap.raw() as sys::CUstream;
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: a live stream of the bound context; graph is a valid out-pointer.
        unsafe {
            let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL;
            assert_eq!(sys::cuStreamBeginCapture_v2(raw, mode), sys::CUresult::CUDA_SUCCESS);
            let r = f();
            (r, sys::cuStreamEndCapture(raw, &mut graph))
        }
    };
    // Forward and backward captured apart, so each loop must join its side stream back itself.
    let (r, end) = capture(&mut || {
        let out = LinearForwardViews::new(logp3.as_view_mut(), lse3.as_view_mut(), None);
        let ws = OrderedWorkspace { workspace: work.as_view_mut(), status: Some(status.as_view_mut()) };
        gpu.linear_token_logprobs_forward_ordered(&cap, &head, &targets.as_view(), out, ws, &token)
            .map(|_| ())
    });
    r.unwrap();
    assert_eq!(end, sys::CUresult::CUDA_SUCCESS, "the stream-ordered forward captures");
    let (r, end) = capture(&mut || {
        let grads =
            LinearGradViews { d_hidden: dh3.as_view_mut(), d_weight: dw3.as_view_mut(), d_bias: None };
        let ws = OrderedWorkspace { workspace: work.as_view_mut(), status: Some(status.as_view_mut()) };
        gpu.linear_token_logprobs_backward_ordered(
            &cap,
            &head,
            &targets.as_view(),
            &gl.as_view(),
            None,
            grads,
            ws,
            &token,
        )
        .map(|_| ())
    });
    r.unwrap();
    assert_eq!(end, sys::CUresult::CUDA_SUCCESS, "the stream-ordered backward captures");
    assert_eq!(cap.clone_dtoh(&logp3).unwrap(), s.clone_dtoh(&logp).unwrap(), "captured rows as eager ones");
    assert_eq!(cap.clone_dtoh(&dw3).unwrap(), s.clone_dtoh(&dw).unwrap(), "captured d_weight as eager");
    let (r, end) = capture(&mut || {
        gpu.linear_token_logprobs_forward(&cap, &head, &targets.as_view(), &planned).map(|_| ())
    });
    assert!(
        r.is_err() && end == sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        "the planned loop cannot be captured: {end:?}"
    );
    // The negative control of the join: a stream forked into the capture by waiting on one of its
    // events, given work and never waited on, leaves the capture unjoined.
    let side = gpu.new_stream().unwrap();
    let mut scratch = side.alloc_zeros::<u8>(64).unwrap();
    // SAFETY: a live event of the bound context, destroyed at the end.
    let event = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;
    let event = cudarc::driver::result::event::create(event).unwrap();
    let (r, end) = capture(&mut || {
        // SAFETY: live stream and event handles of the bound context.
        unsafe {
            cudarc::driver::result::event::record(event, cap.raw() as sys::CUstream)?;
            let wait = sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT;
            cudarc::driver::result::stream::wait_event(side.raw() as sys::CUstream, event, wait)?;
        }
        side.memset_zeros(&mut scratch.as_view_mut())
    });
    r.unwrap();
    assert_eq!(end, sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_UNJOINED, "a fork left unjoined");
    // SAFETY: created above, no longer used.
    unsafe { cudarc::driver::result::event::destroy(event) }.unwrap();
}

/// The vocabulary shard's host-planned loops (partials and backward) run their row passes on a
/// second stream too: the stand-in counts each chunk's hand-offs exactly, and one stream
/// (`PREF_KERNELS_HEAD_STREAMS=1`) gives no hand-offs and the same partials.
fn vocab_shard_loops_run_on_two_streams(gpu: &Gpu, seed: u64) {
    use pref_kernels::linear_token_logprobs::{
        workspace_bytes_per_row, LinearConfig, LinearGradViews, LinearHead, LinearShape,
    };
    use pref_kernels::params::{SOFTMAX_STATS, VP_STATS};
    use pref_kernels::vocab_parallel::VocabShard;
    if !crate::is_standin(gpu) {
        return;
    }
    let (n, h, vocab) = (23usize, 16usize, 90usize);
    let shard = VocabShard::new(30, 40, vocab).unwrap();
    let shape = LinearShape { n_rows: n, hidden: h, vocab: shard.len };
    let mut r = rng(seed, 43);
    let s = gpu.default_stream();
    let hidden = s.clone_htod(&(0..n * h).map(|_| r.random_range(-1.0f32..1.0)).collect::<Vec<_>>()).unwrap();
    let weight =
        s.clone_htod(&(0..shard.len * h).map(|_| r.random_range(-0.3f32..0.3)).collect::<Vec<_>>()).unwrap();
    let targets = s
        .clone_htod(
            &(0..n).map(|i| if i % 5 == 0 { -100 } else { (i * 7 % vocab) as i64 }).collect::<Vec<_>>(),
        )
        .unwrap();
    let head = LinearHead { hidden: hidden.as_view(), weight: weight.as_view(), bias: None, shape };
    // 12 rows' budget: two slots of 6, so the 18 used rows take 3 chunks (one stream: 2 of 12).
    let cfg = LinearConfig {
        workspace_bytes: workspace_bytes_per_row(&shape, pref_kernels::DType::F32) * 12,
        ..LinearConfig::default()
    };
    let stats = s.clone_htod(&vec![0.25f32; n * SOFTMAX_STATS]).unwrap();
    let gl = s.clone_htod(&vec![0.5f32; n]).unwrap();
    let run = |want_chunks: usize| {
        let mut part = s.alloc_zeros::<f32>(n * VP_STATS).unwrap();
        let before = standin_counters();
        let fwd = gpu
            .linear_shard_partials_into(&s, &head, shard, &targets.as_view(), part.as_view_mut(), &cfg)
            .unwrap();
        let mid = standin_counters();
        let (mut dh, mut dw) =
            (s.alloc_zeros::<f32>(n * h).unwrap(), s.alloc_zeros::<f32>(shard.len * h).unwrap());
        let grads = LinearGradViews { d_hidden: dh.as_view_mut(), d_weight: dw.as_view_mut(), d_bias: None };
        let bwd = gpu
            .linear_shard_backward_into(
                &s,
                &head,
                shard,
                &targets.as_view(),
                &stats.as_view(),
                &gl.as_view(),
                None,
                grads,
                &cfg,
            )
            .unwrap();
        let after = standin_counters();
        assert_eq!((fwd.n_chunks, bwd.n_chunks), (want_chunks, want_chunks));
        let bits: Vec<u32> = s.clone_dtoh(&part).unwrap().iter().map(|x| x.to_bits()).collect();
        (bits, mid[4] - before[4], after[4] - mid[4])
    };
    // The partials loop hands each chunk over (3), waits for slot 0's drain before chunk 3 (1) and
    // joins at the end (1); the backward hands each chunk over (3) and waits for each drain
    // before the chunk's weight GEMMs (3).
    let (two, fwd_waits, bwd_waits) = run(3);
    assert_eq!((fwd_waits, bwd_waits), (3 + 1 + 1, 3 + 3), "cross-stream hand-offs of the shard loops");
    std::env::set_var("PREF_KERNELS_HEAD_STREAMS", "1");
    let one = std::panic::catch_unwind(|| run(2));
    std::env::remove_var("PREF_KERNELS_HEAD_STREAMS");
    let (one, fwd_waits, bwd_waits) = one.unwrap();
    assert_eq!((fwd_waits, bwd_waits), (0, 0), "no cross-stream waits on one stream");
    assert_eq!(one, two, "one stream or two: the same shard partials (bits)");
}

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "stream_ordered_head_captures_without_waits_or_allocations",
            run: Box::new(stream_ordered_head_captures_without_waits_or_allocations),
        },
        Case {
            name: "vocab_shard_loops_run_on_two_streams",
            run: Box::new(vocab_shard_loops_run_on_two_streams),
        },
        Case { name: "old_gpus_are_refused_up_front", run: Box::new(old_gpus_are_refused_up_front) },
        Case { name: "sticky_errors_name_the_kernel", run: Box::new(sticky_errors_name_the_kernel) },
        Case {
            name: "c_abi_restores_the_callers_context",
            run: Box::new(c_abi_restores_the_callers_context),
        },
        Case { name: "emulator_matches_the_gpu", run: Box::new(emulator_matches_the_gpu) },
        Case { name: "calls_from_a_fresh_thread", run: Box::new(calls_from_a_fresh_thread) },
    ]
}
