//! The C ABI of the fused LM head, the per-sequence reductions and the group-loss label check, on
//! the emulator with caller-owned (registered) host memory, as the PyTorch package calls them:
//! results equal the f64 references (and the linear step the safe API, bitwise), and hostile
//! arguments (null, misaligned, negative or overflowing sizes, bad codes) give -1 with a message,
//! never a panic (-2) or an access outside the caller's buffers.
use std::ffi::CStr;

use pref_kernels::ffi::{
    prefk_group_loss_check_labels, prefk_last_error, prefk_linear_grpo_step, prefk_linear_preference_step,
    prefk_linear_token_logprobs_backward, prefk_linear_token_logprobs_forward, prefk_register_host_memory,
    prefk_seq_reduce, prefk_unregister_host_memory, PrefkLossTerm, PREFK_DEVICE_EMULATOR,
};
use pref_kernels::linear_token_logprobs::{reference as lin_ref, LinearShape};
use pref_kernels::preference_loss::{reference as loss_ref, LossConfig, Pairs};
use pref_kernels::seq_reduce::{reference as reduce_ref, ReduceMode, SeqLayout, TokenInputs};
use pref_kernels::TokenLogprobsConfig;
#[path = "common/pseudo.rs"]
mod pseudo;
use pseudo::pseudo;

const EMU: i32 = PREFK_DEVICE_EMULATOR;

fn last() -> String {
    // SAFETY: the library returns its thread-local NUL-terminated message.
    unsafe { CStr::from_ptr(prefk_last_error()) }.to_string_lossy().into_owned()
}

/// Host buffers registered with the emulator for the test's duration.
struct Registered(Vec<u64>);

impl Registered {
    fn new() -> Self {
        Registered(Vec::new())
    }
    fn add<T>(&mut self, v: &mut [T], initialized: bool) -> u64 {
        let p = v.as_mut_ptr() as u64;
        let bytes = std::mem::size_of_val(v) as i64;
        // SAFETY: `v` outlives the registration (dropped after `self` by declaration order).
        assert_eq!(unsafe { prefk_register_host_memory(p, bytes, i32::from(initialized)) }, 0, "{}", last());
        self.0.push(p);
        p
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        for &p in &self.0 {
            assert_eq!(prefk_unregister_host_memory(p), 0, "{}", last());
        }
    }
}

struct Problem {
    n: usize,
    h: usize,
    v: usize,
    hidden: Vec<f32>,
    weight: Vec<f32>,
    targets: Vec<i64>,
}

fn problem() -> Problem {
    let (n, h, v) = (24, 12, 70);
    let targets = (0..n).map(|i| if i % 6 < 2 { -100 } else { ((i * 37) % v) as i64 }).collect();
    Problem { n, h, v, hidden: pseudo(n * h, 3, -2.0, 2.0), weight: pseudo(v * h, 5, -0.5, 0.5), targets }
}

#[test]
fn linear_forward_and_backward_through_the_c_abi() {
    let mut p = problem();
    let (n, h, v) = (p.n, p.h, p.v);
    let mut logp = vec![f32::NAN; n];
    let mut lse = vec![f32::NAN; n];
    let mut grad_logp = pseudo(n, 7, -1.0, 1.0);
    let mut d_hidden = vec![f32::NAN; n * h];
    let mut d_weight = vec![f32::NAN; v * h];
    let mut reg = Registered::new();
    let (hp, wp, tp) =
        (reg.add(&mut p.hidden, true), reg.add(&mut p.weight, true), reg.add(&mut p.targets, true));
    let (lp, sp) = (reg.add(&mut logp, false), reg.add(&mut lse, false));
    let (gp, dhp, dwp) =
        (reg.add(&mut grad_logp, true), reg.add(&mut d_hidden, false), reg.add(&mut d_weight, false));
    let mut n_chunks = 0i64;
    let row_bytes = ((v + h) * 4 + 56) as i64;
    // SAFETY: registered buffers of the sizes given; n_chunks is a valid host i64.
    let rc = unsafe {
        prefk_linear_token_logprobs_forward(&pref_kernels::ffi::PrefkLinearTokenLogprobsForwardArgs {
            device: EMU,
            stream: 0,
            dtype_code: 0,
            index_code: 1,
            hidden: hp,
            weight: wp,
            bias: 0,
            targets: tp,
            logp: lp,
            lse: sp,
            entropy: 0,
            n_rows: n as i64,
            hidden_dim: h as i64,
            vocab: v as i64,
            ignore_index: -100,
            temperature: 1.0,
            workspace_bytes: 5 * row_bytes,
            n_chunks: &mut n_chunks,
            ..pref_kernels::ffi::PrefkLinearTokenLogprobsForwardArgs::new()
        })
    };
    assert_eq!(rc, 0, "{}", last());
    // A budget of 5 rows taking more than one chunk is halved into two slots of 2 rows (a second
    // stream drains one while the next chunk fills the other), unless one stream is asked for.
    let one_stream = std::env::var("PREF_KERNELS_HEAD_STREAMS").as_deref() == Ok("1");
    assert_eq!(n_chunks, if one_stream { 4 } else { 8 }, "16 used rows in chunks of 5 (or 2 in two slots)");
    let shape = LinearShape { n_rows: n, hidden: h, vocab: v };
    let cfg = TokenLogprobsConfig::default();
    let want = lin_ref::forward(&p.hidden, &p.weight, None, shape, &p.targets, &cfg).unwrap();
    for (r, (&a, &b)) in logp.iter().zip(&want.logp).enumerate() {
        assert!((a as f64 - b).abs() < 1e-5, "logp[{r}] {a} vs {b}");
    }
    // SAFETY: as above.
    let rc = unsafe {
        prefk_linear_token_logprobs_backward(&pref_kernels::ffi::PrefkLinearTokenLogprobsBackwardArgs {
            device: EMU,
            stream: 0,
            dtype_code: 0,
            index_code: 1,
            hidden: hp,
            weight: wp,
            bias: 0,
            targets: tp,
            grad_logp: gp,
            grad_entropy: 0,
            d_hidden: dhp,
            d_weight: dwp,
            d_bias: 0,
            n_rows: n as i64,
            hidden_dim: h as i64,
            vocab: v as i64,
            ignore_index: -100,
            temperature: 1.0,
            workspace_bytes: 3 * row_bytes,
            ..pref_kernels::ffi::PrefkLinearTokenLogprobsBackwardArgs::new()
        })
    };
    assert_eq!(rc, 0, "{}", last());
    let g = lin_ref::backward(&p.hidden, &p.weight, None, shape, &p.targets, &grad_logp, None, &cfg).unwrap();
    for (i, (&a, &b)) in d_hidden.iter().zip(&g.d_hidden).enumerate() {
        assert!((a as f64 - b).abs() < 1e-5, "d_hidden[{i}] {a} vs {b}");
    }
    for (i, (&a, &b)) in d_weight.iter().zip(&g.d_weight).enumerate() {
        assert!((a as f64 - b).abs() < 1e-5, "d_weight[{i}] {a} vs {b}");
    }
}

#[test]
fn linear_step_through_the_c_abi_equals_the_references() {
    let mut p = problem();
    let (n, h, v) = (p.n, p.h, p.v);
    let (n_seqs, seq_len) = (4usize, 6usize);
    let mut ref_logp = pseudo(n, 11, -6.0, -1.0);
    let mut logp = vec![f32::NAN; n];
    let mut d_hidden = vec![f32::NAN; n * h];
    let mut d_weight = vec![f32::NAN; v * h];
    let mut metrics = [f32::NAN; 16];
    let mut pair_out = [f32::NAN; 12];
    let mut reg = Registered::new();
    let (hp, wp, tp) =
        (reg.add(&mut p.hidden, true), reg.add(&mut p.weight, true), reg.add(&mut p.targets, true));
    let rp = reg.add(&mut ref_logp, true);
    let (lp, dhp, dwp) =
        (reg.add(&mut logp, false), reg.add(&mut d_hidden, false), reg.add(&mut d_weight, false));
    let term = PrefkLossTerm { kind: 0, weight: 1.0, beta: 0.1, p0: 0.0, p1: 0.0, flags: 0 };
    // The DPO step on the padded batch (first half chosen) with `n_pairs` rows of `pair_out`.
    let step = |n_pairs: i64, metrics: &mut [f32; 16], pair_out: &mut [f32]| {
        // SAFETY: registered device-side buffers; host metrics of 16 f32 and `pair_out` of the
        // rows the caller claims (the library must check them against the batch before writing).
        unsafe {
            prefk_linear_preference_step(&pref_kernels::ffi::PrefkLinearPreferenceStepArgs {
                device: EMU,
                stream: 0,
                dtype_code: 0,
                index_code: 1,
                hidden: hp,
                weight: wp,
                bias: 0,
                targets: tp,
                weights: 0,
                ref_logp: rp,
                ref_seq: 0,
                cu_seqlens: std::ptr::null(),
                n_seqs: n_seqs as i64,
                seq_len: seq_len as i64,
                chosen: std::ptr::null(),
                rejected: std::ptr::null(),
                n_pairs,
                terms: &term,
                n_terms: 1,
                divergence: 0,
                alpha: 0.5,
                aggregation: 0,
                logp: lp,
                d_hidden: dhp,
                d_weight: dwp,
                d_bias: 0,
                metrics: metrics.as_mut_ptr(),
                pair_out: pair_out.as_mut_ptr(),
                n_rows: n as i64,
                hidden_dim: h as i64,
                vocab: v as i64,
                ignore_index: -100,
                temperature: 1.0,
                workspace_bytes: 1 << 20,
                ..pref_kernels::ffi::PrefkLinearPreferenceStepArgs::new()
            })
        }
    };
    let rc = step(2, &mut metrics, &mut pair_out);
    assert_eq!(rc, 0, "{}", last());
    let shape = LinearShape { n_rows: n, hidden: h, vocab: v };
    let cfg = TokenLogprobsConfig::default();
    let fwd = lin_ref::forward(&p.hidden, &p.weight, None, shape, &p.targets, &cfg).unwrap();
    let logp32: Vec<f32> = fwd.logp.iter().map(|&x| x as f32).collect();
    let mask: Vec<u8> = p.targets.iter().map(|&t| u8::from(t != -100)).collect();
    let tokens = TokenInputs { logp: &logp32, mask: Some(&mask), weights: None, ref_logp: Some(&ref_logp) };
    let seqs = SeqLayout::Padded { n_seqs, seq_len };
    let want =
        loss_ref::forward_backward(&tokens, &seqs, &Pairs::FirstHalfChosen, None, &LossConfig::dpo(0.1))
            .unwrap();
    assert!((metrics[0] as f64 - want.loss).abs() < 1e-5, "loss {} vs {}", metrics[0], want.loss);
    for (k, (&a, &b)) in metrics.iter().zip(&want.metrics).enumerate() {
        assert!((a as f64 - b).abs() < 1e-4, "metric {k}: {a} vs {b}");
    }
    assert!(pair_out.iter().all(|x| x.is_finite()));
    // pair_out with a wrong n_pairs is refused before anything is written (the buffer holds 2 rows).
    let mut short = [f32::NAN; 6];
    let rc = step(1, &mut metrics, &mut short);
    assert_eq!(rc, -1);
    assert!(last().contains("n_pairs"), "{}", last());
    assert!(short.iter().all(|x| x.is_nan()));
    let gl: Vec<f32> = want.grad_logp.iter().map(|&x| x as f32).collect();
    let g = lin_ref::backward(&p.hidden, &p.weight, None, shape, &p.targets, &gl, None, &cfg).unwrap();
    for (i, (&a, &b)) in d_weight.iter().zip(&g.d_weight).enumerate() {
        assert!((a as f64 - b).abs() < 1e-5, "d_weight[{i}] {a} vs {b}");
    }
}

/// The GRPO step through the C ABI (GSPO, packed sequences with a host `cu_seqlens`, a device
/// mask, entropies and a bonus) equals the composed references; a null config or metrics buffer
/// and the refused top-entropy mask are -1 with a message.
#[test]
fn linear_grpo_step_through_the_c_abi_equals_the_references() {
    use pref_kernels::ffi::{PrefkGrpoConfig, PrefkLinearGrpoStepArgs};
    use pref_kernels::grpo::reference::{grpo_loss, GrpoTokens};
    use pref_kernels::grpo::{GrpoConfig, GrpoLossType, ImportanceLevel};
    let mut p = problem();
    let (n, h, v) = (p.n, p.h, p.v);
    let cu: Vec<i32> = vec![0, 5, 5, 13, n as i32];
    let mut mask: Vec<u8> = (0..n).map(|i| u8::from(i % 7 != 3)).collect();
    let mut old = pseudo(n, 21, -5.0, -0.5);
    let mut adv = pseudo(cu.len() - 1, 22, -1.0, 1.0);
    let (mut logp, mut ent) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    let (mut d_hidden, mut d_weight) = (vec![f32::NAN; n * h], vec![f32::NAN; v * h]);
    let mut metrics = [f32::NAN; 8];
    let mut reg = Registered::new();
    let (hp, wp, tp) =
        (reg.add(&mut p.hidden, true), reg.add(&mut p.weight, true), reg.add(&mut p.targets, true));
    let (mp, op, ap) = (reg.add(&mut mask, true), reg.add(&mut old, true), reg.add(&mut adv, true));
    let (lp, ep) = (reg.add(&mut logp, false), reg.add(&mut ent, false));
    let (dhp, dwp) = (reg.add(&mut d_hidden, false), reg.add(&mut d_weight, false));
    let config = PrefkGrpoConfig {
        loss_type: 0,
        importance: 1,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        bias_corrected_kl: 1,
        entropy_coef: 0.01,
        top_entropy_quantile: 1.0,
        grad_scale: 1.0,
        accumulation_steps: 1,
        off_policy_mask_threshold: f32::NAN,
        ..Default::default()
    };
    let call = |config: *const PrefkGrpoConfig, metrics: *mut f32| {
        // SAFETY: registered buffers of the sizes given; host cu_seqlens, config and metrics.
        unsafe {
            prefk_linear_grpo_step(&PrefkLinearGrpoStepArgs {
                device: EMU,
                config,
                hidden: hp,
                weight: wp,
                targets: tp,
                mask: mp,
                old_logp: op,
                advantages: ap,
                cu_seqlens: cu.as_ptr(),
                n_seqs: (cu.len() - 1) as i64,
                logp: lp,
                entropy: ep,
                d_hidden: dhp,
                d_weight: dwp,
                metrics,
                n_rows: n as i64,
                hidden_dim: h as i64,
                vocab: v as i64,
                ignore_index: -100,
                workspace_bytes: 1 << 20,
                index_code: 1,
                compute_entropy: 1,
                temperature: 1.0,
                ..PrefkLinearGrpoStepArgs::new()
            })
        }
    };
    assert_eq!(call(&config, metrics.as_mut_ptr()), 0, "{}", last());
    let shape = LinearShape { n_rows: n, hidden: h, vocab: v };
    let tcfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let fwd = lin_ref::forward(&p.hidden, &p.weight, None, shape, &p.targets, &tcfg).unwrap();
    let logp32: Vec<f32> = fwd.logp.iter().map(|&x| x as f32).collect();
    let ent32: Vec<f32> = fwd.entropy.iter().map(|&x| x as f32).collect();
    let counted: Vec<u8> = (0..n).map(|t| u8::from(mask[t] != 0 && p.targets[t] != -100)).collect();
    let tokens = GrpoTokens {
        logp: &logp32,
        old_logp: Some(&old),
        sampling_logp: None,
        ref_logp: None,
        mask: Some(&counted),
        is_weights: None,
        entropy: Some(&ent32),
    };
    let cfg = GrpoConfig {
        loss_type: GrpoLossType::Grpo,
        importance: ImportanceLevel::Sequence,
        entropy_coef: 0.01,
        ..GrpoConfig::trl()
    };
    let want = grpo_loss(&tokens, &SeqLayout::Packed { cu_seqlens: &cu }, &adv, &cfg).unwrap();
    for (k, (&a, &b)) in metrics.iter().zip(&want.metrics).enumerate() {
        assert!((a as f64 - b).abs() < 1e-5 + 1e-4 * b.abs(), "metric {k}: {a} vs {b}");
    }
    for t in 0..n {
        let w = if counted[t] != 0 { fwd.logp[t] } else { 0.0 };
        assert!((logp[t] as f64 - w).abs() < 1e-5, "logp[{t}] {} vs {w}", logp[t]);
    }
    let gl: Vec<f32> = want.grad_logp.iter().map(|&x| x as f32).collect();
    let ge: Vec<f32> = want.grad_entropy.iter().map(|&x| x as f32).collect();
    let g = lin_ref::backward(&p.hidden, &p.weight, None, shape, &p.targets, &gl, Some(&ge), &tcfg).unwrap();
    for (i, (&a, &b)) in d_weight.iter().zip(&g.d_weight).enumerate() {
        assert!((a as f64 - b).abs() < 1e-5, "d_weight[{i}] {a} vs {b}");
    }
    for (i, (&a, &b)) in d_hidden.iter().zip(&g.d_hidden).enumerate() {
        assert!((a as f64 - b).abs() < 1e-5, "d_hidden[{i}] {a} vs {b}");
    }
    // Refusals: no config, no metrics buffer, the top-entropy mask.
    assert_eq!(call(std::ptr::null(), metrics.as_mut_ptr()), -1);
    assert!(last().contains("config"), "{}", last());
    assert_eq!(call(&config, std::ptr::null_mut()), -1);
    assert!(last().contains("metrics"), "{}", last());
    let masked = PrefkGrpoConfig { top_entropy_quantile: 0.5, ..config };
    assert_eq!(call(&masked, metrics.as_mut_ptr()), -1);
    assert!(last().contains("top_entropy_quantile"), "{}", last());
}

#[test]
fn hostile_linear_arguments_are_errors_not_panics() {
    let mut p = problem();
    let (n, h, v) = (p.n as i64, p.h as i64, p.v as i64);
    let mut logp = vec![0f32; p.n];
    let mut lse = vec![0f32; p.n];
    let mut reg = Registered::new();
    let (hp, wp, tp) =
        (reg.add(&mut p.hidden, true), reg.add(&mut p.weight, true), reg.add(&mut p.targets, true));
    let (lp, sp) = (reg.add(&mut logp, false), reg.add(&mut lse, false));
    let call = |hidden: u64, weight: u64, n: i64, h: i64, v: i64, dtype: u32, work: i64| {
        // SAFETY: every pointer is registered or hostile on purpose; the library checks before use
        // and the emulator checks every access.
        unsafe {
            prefk_linear_token_logprobs_forward(&pref_kernels::ffi::PrefkLinearTokenLogprobsForwardArgs {
                device: EMU,
                stream: 0,
                dtype_code: dtype,
                index_code: 1,
                hidden,
                weight,
                bias: 0,
                targets: tp,
                logp: lp,
                lse: sp,
                entropy: 0,
                n_rows: n,
                hidden_dim: h,
                vocab: v,
                ignore_index: -100,
                temperature: 1.0,
                workspace_bytes: work,
                n_chunks: std::ptr::null_mut(),
                ..pref_kernels::ffi::PrefkLinearTokenLogprobsForwardArgs::new()
            })
        }
    };
    type Case = (&'static str, (u64, u64, i64, i64, i64, u32, i64), &'static str);
    let cases: [Case; 7] = [
        ("null hidden", (0, wp, n, h, v, 0, 1 << 20), "hidden"),
        ("misaligned weight", (hp, wp + 2, n, h, v, 0, 1 << 20), "weight"),
        ("negative rows", (hp, wp, -1, h, v, 0, 1 << 20), "n_rows"),
        ("overflowing size", (hp, wp, i64::MAX, 1 << 40, v, 0, 1 << 20), "overflow"),
        ("unknown dtype", (hp, wp, n, h, v, 9, 1 << 20), "dtype"),
        ("workspace below one row", (hp, wp, n, h, v, 0, 100), "minimum"),
        ("vocab larger than the weight", (hp, wp, n, h, v + 1, 0, 1 << 20), "emulator"),
    ];
    for (what, (hid, w, n, h, v, dtype, work), needle) in cases {
        let rc = call(hid, w, n, h, v, dtype, work);
        assert_eq!(rc, -1, "{what}: expected an error");
        assert!(last().contains(needle), "{what}: {}", last());
    }
}

#[test]
fn reductions_and_label_checks_through_the_c_abi() {
    let cu = [0i32, 5, 5, 12, 20];
    let mut logp = pseudo(20, 13, -4.0, 0.0);
    let mut mask: Vec<u8> = (0..20).map(|i| u8::from(i % 4 != 0)).collect();
    let mut cu_dev = cu.to_vec();
    let mut scores = vec![f32::NAN; 4];
    let mut reg = Registered::new();
    let (lp, mp, cp) = (reg.add(&mut logp, true), reg.add(&mut mask, true), reg.add(&mut cu_dev, true));
    let sp = reg.add(&mut scores, false);
    for (code, mode) in [(0u32, ReduceMode::Sum), (1, ReduceMode::Mean)] {
        // SAFETY: registered buffers of the sizes given.
        let rc = unsafe {
            prefk_seq_reduce(&pref_kernels::ffi::PrefkSeqReduceArgs {
                device: EMU,
                stream: 0,
                logp: lp,
                mask: mp,
                weights: 0,
                n_tokens: 20,
                cu_seqlens: cp,
                n_seqs: 4,
                seq_len: 0,
                mode: code,
                scores: sp,
                stats: 0,
                status: 0,
                ..pref_kernels::ffi::PrefkSeqReduceArgs::new()
            })
        };
        assert_eq!(rc, 0, "{}", last());
        let tokens = TokenInputs { logp: &logp, mask: Some(&mask), weights: None, ref_logp: None };
        let want = reduce_ref::reduce(&tokens, &SeqLayout::Packed { cu_seqlens: &cu }, mode).unwrap();
        for (s, (&a, &b)) in scores.iter().zip(&want).enumerate() {
            assert!((a as f64 - b).abs() < 1e-5, "{mode:?} seq {s}: {a} vs {b}");
        }
    }
    // SAFETY: as above.
    assert_eq!(
        unsafe {
            prefk_seq_reduce(&pref_kernels::ffi::PrefkSeqReduceArgs {
                device: EMU,
                stream: 0,
                logp: lp,
                mask: mp,
                weights: 0,
                n_tokens: 20,
                cu_seqlens: cp,
                n_seqs: 4,
                seq_len: 0,
                mode: 7,
                scores: sp,
                stats: 0,
                status: 0,
                ..pref_kernels::ffi::PrefkSeqReduceArgs::new()
            })
        },
        -1
    );
    assert!(last().contains("mode"), "{}", last());
    // SAFETY: as above; weighted modes need weights.
    assert_eq!(
        unsafe {
            prefk_seq_reduce(&pref_kernels::ffi::PrefkSeqReduceArgs {
                device: EMU,
                stream: 0,
                logp: lp,
                mask: mp,
                weights: 0,
                n_tokens: 20,
                cu_seqlens: cp,
                n_seqs: 4,
                seq_len: 0,
                mode: 2,
                scores: sp,
                stats: 0,
                status: 0,
                ..pref_kernels::ffi::PrefkSeqReduceArgs::new()
            })
        },
        -1
    );
    assert!(last().contains("weights"), "{}", last());

    let roles = [1.0f32, 0.0, 2.0, 3.0];
    // SAFETY: host labels of the length given.
    let ok = unsafe {
        prefk_group_loss_check_labels(&pref_kernels::ffi::PrefkGroupLossCheckLabelsArgs {
            kind: 0,
            beta: 0.1,
            p0: 1.0,
            p1: 1.0,
            kl_given: f32::NAN,
            flags: 0,
            list_size: 0,
            labels: roles.as_ptr(),
            n_seqs: 4,
            ..pref_kernels::ffi::PrefkGroupLossCheckLabelsArgs::new()
        })
    };
    assert_eq!(ok, 0, "{}", last());
    let bad = [1.0f32, 5.0];
    // SAFETY: as above.
    let rc = unsafe {
        prefk_group_loss_check_labels(&pref_kernels::ffi::PrefkGroupLossCheckLabelsArgs {
            kind: 0,
            beta: 0.1,
            p0: 1.0,
            p1: 1.0,
            kl_given: f32::NAN,
            flags: 0,
            list_size: 0,
            labels: bad.as_ptr(),
            n_seqs: 2,
            ..pref_kernels::ffi::PrefkGroupLossCheckLabelsArgs::new()
        })
    };
    assert_eq!(rc, -1);
    let rising = [1.0f32, 2.0];
    // SAFETY: as above; PRO rewards must be in ranking order.
    let rc = unsafe {
        prefk_group_loss_check_labels(&pref_kernels::ffi::PrefkGroupLossCheckLabelsArgs {
            kind: 2,
            beta: 0.0,
            p0: 0.05,
            p1: 0.0,
            kl_given: f32::NAN,
            flags: 0,
            list_size: 2,
            labels: rising.as_ptr(),
            n_seqs: 2,
            ..pref_kernels::ffi::PrefkGroupLossCheckLabelsArgs::new()
        })
    };
    assert_eq!(rc, -1);
    assert!(last().contains("non-increasing"), "{}", last());
}
