//! CPU tensors through the C ABI: caller-owned host memory registered with the emulator is used by
//! the kernels with every check on. Token log-probs on registered buffers equal the f64 reference;
//! a logits buffer one element too short is caught by memcheck (not read past); an output read
//! before it is written is caught by initcheck; overlapping, double and foreign registrations are
//! refused. This is the path the PyTorch package takes for CPU tensors.
use std::ffi::CStr;

use pref_kernels::ffi::{
    prefk_last_error, prefk_register_host_memory, prefk_token_logprobs_backward_entropy,
    prefk_token_logprobs_forward, prefk_unregister_host_memory, PREFK_DEVICE_EMULATOR,
};
use pref_kernels::token_logprobs::reference;
use pref_kernels::{LogitsLayout, TokenLogprobsConfig};
#[path = "common/pseudo.rs"]
mod pseudo;
use pseudo::pseudo;

fn last() -> String {
    // SAFETY: the library returns its thread-local NUL-terminated message.
    unsafe { CStr::from_ptr(prefk_last_error()) }.to_string_lossy().into_owned()
}

fn addr<T>(v: &[T]) -> u64 {
    v.as_ptr() as u64
}

fn register<T>(v: &mut [T], initialized: bool) -> i32 {
    // SAFETY: `v` is live, writable host memory that outlives the registration (unregistered below).
    unsafe { prefk_register_host_memory(addr(v), std::mem::size_of_val(v) as i64, i32::from(initialized)) }
}

#[test]
fn registered_host_memory_runs_the_kernels_with_checks() {
    if !pref_kernels::runtime::emulator::built() {
        panic!("this build has no emulator: the C ABI's CPU path cannot be tested");
    }
    let (n, v) = (5usize, 37usize);
    let mut logits = pseudo(n * v, 3, -4.0, 4.0);
    let mut targets: Vec<i64> = vec![3, -100, 36, 0, 17];
    let mut logp = vec![f32::NAN; n];
    let mut lse = vec![f32::NAN; n];
    let mut entropy = vec![f32::NAN; n];
    let mut stats = vec![f32::NAN; 2 * n];
    for (buf, init) in
        [(&mut logits[..], true), (&mut logp[..], false), (&mut lse[..], false), (&mut stats[..], false)]
    {
        assert_eq!(register(buf, init), 0, "{}", last());
    }
    assert_eq!(register(&mut targets, true), 0, "{}", last());
    assert_eq!(register(&mut entropy, false), 0, "{}", last());
    // Overlap and double registration are refused.
    assert_eq!(register(&mut logits[1..3], true), -1);
    assert!(last().contains("overlaps"), "{}", last());

    // SAFETY: every pointer is a registered buffer of the sizes given.
    let rc = unsafe {
        prefk_token_logprobs_forward(&pref_kernels::ffi::PrefkTokenLogprobsForwardArgs {
            device: PREFK_DEVICE_EMULATOR,
            stream: 0,
            dtype_code: 0,
            index_code: 1,
            logits: addr(&logits),
            targets: addr(&targets),
            logp: addr(&logp),
            lse: addr(&lse),
            stats: addr(&stats),
            entropy: addr(&entropy),
            log_sum_sq: 0,
            status: 0,
            n_rows: n as i64,
            vocab: v as i64,
            row_stride: v as i64,
            ignore_index: -100,
            temperature: 0.7,
            ..pref_kernels::ffi::PrefkTokenLogprobsForwardArgs::new()
        })
    };
    assert_eq!(rc, 0, "{}", last());
    let cfg = TokenLogprobsConfig { temperature: 0.7, compute_entropy: true, ..Default::default() };
    let want = reference::forward(&logits, LogitsLayout::contiguous(n, v), &targets, &cfg).unwrap();
    for r in 0..n {
        assert!((logp[r] as f64 - want.logp[r]).abs() < 1e-5, "logp[{r}] {} vs {}", logp[r], want.logp[r]);
        assert!((lse[r] as f64 - want.lse[r]).abs() < 1e-5, "lse[{r}]");
        assert!((entropy[r] as f64 - want.entropy[r]).abs() < 1e-5, "entropy[{r}]");
    }

    // The backward with the entropy's gradient into a registered, never-written output.
    let mut grad_logp = pseudo(n, 9, -4.0, 4.0);
    let mut grad_ent = pseudo(n, 11, -4.0, 4.0);
    let mut grad = vec![f32::NAN; n * v];
    assert_eq!(register(&mut grad_logp, true), 0, "{}", last());
    assert_eq!(register(&mut grad_ent, true), 0, "{}", last());
    assert_eq!(register(&mut grad, false), 0, "{}", last());
    // SAFETY: registered buffers of the sizes given.
    let rc = unsafe {
        prefk_token_logprobs_backward_entropy(&pref_kernels::ffi::PrefkTokenLogprobsBackwardEntropyArgs {
            device: PREFK_DEVICE_EMULATOR,
            stream: 0,
            dtype_code: 0,
            index_code: 1,
            logits: addr(&logits),
            targets: addr(&targets),
            stats: addr(&stats),
            entropy: addr(&entropy),
            grad_logp: addr(&grad_logp),
            grad_entropy: addr(&grad_ent),
            grad_logits: addr(&grad),
            status: 0,
            n_rows: n as i64,
            vocab: v as i64,
            row_stride: v as i64,
            grad_stride: v as i64,
            ignore_index: -100,
            temperature: 0.7,
            ..pref_kernels::ffi::PrefkTokenLogprobsBackwardEntropyArgs::new()
        })
    };
    assert_eq!(rc, 0, "{}", last());
    let g = pref_kernels::token_logprobs::reference::backward_with_entropy(
        &logits,
        LogitsLayout::contiguous(n, v),
        &targets,
        &grad_logp,
        &grad_ent,
        &cfg,
    )
    .unwrap();
    for (i, (&a, &b)) in grad.iter().zip(&g).enumerate() {
        assert!((a as f64 - b).abs() < 1e-5, "d/dlogits[{i}] {a} vs {b}");
    }

    // A logits buffer one element short: the kernel's read of the last element is caught.
    let mut short = pseudo(n * v - 1, 5, -4.0, 4.0);
    assert_eq!(register(&mut short, true), 0, "{}", last());
    // SAFETY: the emulator checks every access; nothing outside registered memory is touched.
    let rc = unsafe {
        prefk_token_logprobs_forward(&pref_kernels::ffi::PrefkTokenLogprobsForwardArgs {
            device: PREFK_DEVICE_EMULATOR,
            stream: 0,
            dtype_code: 0,
            index_code: 1,
            logits: addr(&short),
            targets: addr(&targets),
            logp: addr(&logp),
            lse: addr(&lse),
            stats: 0,
            entropy: 0,
            log_sum_sq: 0,
            status: 0,
            n_rows: n as i64,
            vocab: v as i64,
            row_stride: v as i64,
            ignore_index: -100,
            temperature: 1.0,
            ..pref_kernels::ffi::PrefkTokenLogprobsForwardArgs::new()
        })
    };
    assert_eq!(rc, -1);
    assert!(last().contains("memcheck"), "{}", last());

    // A stats buffer registered as an output and never written: the backward's read of it is caught.
    let mut stale_lse = vec![0f32; 2 * n];
    assert_eq!(register(&mut stale_lse, false), 0, "{}", last());
    // SAFETY: registered buffers of the sizes given.
    let rc = unsafe {
        prefk_token_logprobs_backward_entropy(&pref_kernels::ffi::PrefkTokenLogprobsBackwardEntropyArgs {
            device: PREFK_DEVICE_EMULATOR,
            stream: 0,
            dtype_code: 0,
            index_code: 1,
            logits: addr(&logits),
            targets: addr(&targets),
            stats: addr(&stale_lse),
            entropy: 0,
            grad_logp: addr(&grad_logp),
            grad_entropy: 0,
            grad_logits: addr(&grad),
            status: 0,
            n_rows: n as i64,
            vocab: v as i64,
            row_stride: v as i64,
            grad_stride: v as i64,
            ignore_index: -100,
            temperature: 1.0,
            ..pref_kernels::ffi::PrefkTokenLogprobsBackwardEntropyArgs::new()
        })
    };
    assert_eq!(rc, -1);
    assert!(last().contains("initcheck"), "{}", last());
    assert_eq!(prefk_unregister_host_memory(addr(&stale_lse)), 0, "{}", last());

    for p in
        [addr(&logits), addr(&targets), addr(&logp), addr(&lse), addr(&stats), addr(&entropy), addr(&short)]
    {
        assert_eq!(prefk_unregister_host_memory(p), 0, "{}", last());
    }
    for p in [addr(&grad_logp), addr(&grad_ent), addr(&grad)] {
        assert_eq!(prefk_unregister_host_memory(p), 0, "{}", last());
    }
    // A range too large for the emulator's shadow state is an error, not an abort.
    // SAFETY: refused before the range is touched.
    assert_eq!(unsafe { prefk_register_host_memory(0x10000, 1i64 << 60, 0) }, -1);
    assert!(last().contains("1 TiB"), "{}", last());
    // Unregistering twice, or memory never registered, is an error, not a free.
    assert_eq!(prefk_unregister_host_memory(addr(&logits)), -1);
    assert!(last().contains("did not register"), "{}", last());
}
