//! C ABI for callers outside Rust (PyTorch through ctypes, C++): plain integers and device
//! pointers, the caller's stream, 0 on success, -1 on error (message from [`prefk_last_error`]),
//! -2 when a Rust panic was caught (never unwinds across the boundary). Header: `include/prefk.h`.
//!
//! Each entry point takes the device: a CUDA ordinal (>= 0), or [`PREFK_DEVICE_EMULATOR`] (-1) for
//! the CPU emulator, whose pointers are host addresses of emulator allocations (or, with
//! `PREF_KERNELS_EMU_CHECKS=none`, any host memory). `PREF_KERNELS_BACKEND=emulator` makes every
//! ordinal the emulator. The first call on a device opens it ([`Gpu::open`]: retains the primary
//! context PyTorch uses, loads every module) and later calls reuse it. Load eagerly (e.g. call
//! [`prefk_init`]) before capturing CUDA graphs.
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use crate::dtype::{DType, IndexType};
use crate::error::{ensure, invalid, Result};
use crate::group_loss::{GroupLoss, GroupLossPtrs, KtoKl};
use crate::grpo::{GrpoConfig, GrpoLossType, GrpoPtrs, ImportanceLevel};
use crate::pref_loss::{BarrierDenominator, FDivergence, Loss, LossConfig, PairLossPtrs, RawPairs};
use crate::prefix_attn::{AttnShape, PrefixAttnBwdPtrs, PrefixAttnFwdPtrs, RawPrefixLayout};
use crate::seq_reduce::{DeviceSeqLayout, ReduceMode, SeqReducePtrs, TokenGradPtrs};
use crate::token_logprobs::{TokenLogprobsBwdPtrs, TokenLogprobsConfig, TokenLogprobsFwdPtrs};
use crate::{Backend, Gpu, LogitsLayout};

mod linear;
mod vocab_parallel;
pub use linear::{
    prefk_linear_logprobs_backward, prefk_linear_logprobs_forward, prefk_linear_preference_step,
};
pub use vocab_parallel::{
    prefk_vocab_check_tiling, prefk_vocab_parallel_finalize, prefk_vocab_shard_backward,
    prefk_vocab_shard_partials,
};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: String) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn ffi(f: impl FnOnce() -> Result<()>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            set_error(e.to_string());
            -1
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned());
            set_error(format!("internal panic: {}", msg.unwrap_or_else(|| "unknown".into())));
            -2
        }
    }
}

/// The `device` value that selects the CPU emulator.
pub const PREFK_DEVICE_EMULATOR: i32 = -1;

fn gpu(device: i32) -> Result<Arc<Gpu>> {
    static GPUS: OnceLock<Mutex<HashMap<i32, Arc<Gpu>>>> = OnceLock::new();
    let backend = if device == PREFK_DEVICE_EMULATOR { Backend::Emulator } else { Backend::Cuda };
    let ordinal = if device == PREFK_DEVICE_EMULATOR {
        0
    } else {
        usize::try_from(device)
            .map_err(|_| invalid("device", format!("must be >= 0 or -1 (emulator), got {device}")))?
    };
    let mut map = GPUS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(g) = map.get(&device) {
        return Ok(g.clone());
    }
    let g = Arc::new(Gpu::open(backend, ordinal)?);
    map.insert(device, g.clone());
    Ok(g)
}

fn dtype(code: u32) -> Result<DType> {
    match code {
        0 => Ok(DType::F32),
        1 => Ok(DType::F16),
        2 => Ok(DType::BF16),
        _ => Err(invalid("dtype", format!("0 (f32), 1 (f16) or 2 (bf16), got {code}"))),
    }
}

fn index_type(code: u32) -> Result<IndexType> {
    match code {
        0 => Ok(IndexType::I32),
        1 => Ok(IndexType::I64),
        _ => Err(invalid("index_type", format!("0 (i32) or 1 (i64), got {code}"))),
    }
}

/// Copies `n` host values at `p` (null or `n == 0` gives an empty vector; a misaligned `p` is an
/// error, not undefined behaviour).
///
/// # Safety
/// `p` is null or valid for `n` reads.
pub(super) unsafe fn host_vec<T: Copy>(arg: &'static str, p: *const T, n: usize) -> Result<Vec<T>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    ensure(!p.is_null(), arg, || format!("null pointer for {n} host values"))?;
    ensure((p as usize) % std::mem::align_of::<T>() == 0, arg, || {
        format!("host pointer {p:?} is not aligned to {} bytes", std::mem::align_of::<T>())
    })?;
    // SAFETY: forwarded to the caller; non-null and aligned checked above.
    Ok(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
}

fn size(arg: &'static str, v: i64) -> Result<usize> {
    usize::try_from(v).map_err(|_| invalid(arg, format!("must be >= 0, got {v}")))
}

/// The message of the last error on this thread (empty if none). Valid until the next call on
/// this thread.
#[no_mangle]
pub extern "C" fn prefk_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Opens `device` (driver checks, module loading) ahead of the first op.
#[no_mangle]
pub extern "C" fn prefk_init(device: i32) -> i32 {
    ffi(|| gpu(device).map(|_| ()))
}

/// Token log-probs forward ([`Gpu::token_logprobs_forward_raw`]). `stats` (`[n_rows, 2]` f32,
/// what the backward reads), `entropy`, `log_sum_sq` (`[n_rows]` f32 log Σ p², WPO's term; needs
/// `entropy`) and `status` may be 0.
///
/// # Safety
/// As [`Gpu::token_logprobs_forward_raw`]: every non-zero pointer is device memory of `device`
/// sized for the shapes given, `stream` is 0 or a live stream of that device's primary context.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_token_logprobs_forward(
    device: i32,
    stream: u64,
    dtype_code: u32,
    index_code: u32,
    logits: u64,
    targets: u64,
    logp: u64,
    lse: u64,
    stats: u64,
    entropy: u64,
    log_sum_sq: u64,
    status: u64,
    n_rows: i64,
    vocab: i64,
    row_stride: i64,
    ignore_index: i64,
    temperature: f32,
) -> i32 {
    ffi(|| {
        let layout = LogitsLayout {
            n_rows: size("n_rows", n_rows)?,
            vocab: size("vocab", vocab)?,
            row_stride: size("row_stride", row_stride)?,
        };
        let cfg = TokenLogprobsConfig {
            ignore_index,
            temperature,
            compute_entropy: entropy != 0,
            check_targets: false,
        };
        let ptrs = TokenLogprobsFwdPtrs { logits, targets, logp, lse, entropy, status, stats, log_sum_sq };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.token_logprobs_forward_raw(
                stream,
                dtype(dtype_code)?,
                index_type(index_code)?,
                layout,
                &ptrs,
                &cfg,
            )
        }
    })
}

/// Token log-probs backward ([`Gpu::token_logprobs_backward_raw`]); in place when
/// `grad_logits == logits`.
///
/// # Safety
/// As [`Gpu::token_logprobs_backward_raw`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_token_logprobs_backward(
    device: i32,
    stream: u64,
    dtype_code: u32,
    index_code: u32,
    logits: u64,
    targets: u64,
    stats: u64,
    grad_logp: u64,
    grad_logits: u64,
    status: u64,
    n_rows: i64,
    vocab: i64,
    row_stride: i64,
    grad_stride: i64,
    ignore_index: i64,
    temperature: f32,
) -> i32 {
    // SAFETY: forwarded to the caller; no entropy gradient.
    unsafe {
        prefk_token_logprobs_backward_entropy(
            device,
            stream,
            dtype_code,
            index_code,
            logits,
            targets,
            stats,
            0,
            grad_logp,
            0,
            grad_logits,
            status,
            n_rows,
            vocab,
            row_stride,
            grad_stride,
            ignore_index,
            temperature,
        )
    }
}

/// Token log-probs backward with the entropy's gradient: as [`prefk_token_logprobs_backward`], and
/// when `grad_entropy` is non-zero d/dlogits also holds `-grad_entropy · p_v (log p_v + H) / T`
/// (`entropy`: the forward's `[n_rows]` f32 entropy, required then).
///
/// # Safety
/// As [`Gpu::token_logprobs_backward_raw`]; `entropy` and `grad_entropy` are 0 or hold `n_rows` f32.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_token_logprobs_backward_entropy(
    device: i32,
    stream: u64,
    dtype_code: u32,
    index_code: u32,
    logits: u64,
    targets: u64,
    stats: u64,
    entropy: u64,
    grad_logp: u64,
    grad_entropy: u64,
    grad_logits: u64,
    status: u64,
    n_rows: i64,
    vocab: i64,
    row_stride: i64,
    grad_stride: i64,
    ignore_index: i64,
    temperature: f32,
) -> i32 {
    ffi(|| {
        ensure(grad_entropy == 0 || entropy != 0, "entropy", || {
            "grad_entropy needs the forward's entropy".into()
        })?;
        let layout = LogitsLayout {
            n_rows: size("n_rows", n_rows)?,
            vocab: size("vocab", vocab)?,
            row_stride: size("row_stride", row_stride)?,
        };
        let cfg =
            TokenLogprobsConfig { ignore_index, temperature, compute_entropy: false, check_targets: false };
        let ptrs = TokenLogprobsBwdPtrs {
            logits,
            targets,
            stats,
            grad_logp,
            grad_logits,
            status,
            entropy: if grad_entropy != 0 { entropy } else { 0 },
            grad_entropy,
        };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.token_logprobs_backward_raw(
                stream,
                dtype(dtype_code)?,
                index_type(index_code)?,
                layout,
                size("grad_stride", grad_stride)?,
                &ptrs,
                &cfg,
            )
        }
    })
}

fn reduce_mode(code: u32) -> Result<ReduceMode> {
    Ok(match code {
        0 => ReduceMode::Sum,
        1 => ReduceMode::Mean,
        2 => ReduceMode::WeightedSum,
        3 => ReduceMode::WeightedMean,
        m => {
            return Err(invalid(
                "mode",
                format!("0 (sum), 1 (mean), 2 (weighted sum), 3 (weighted mean), got {m}"),
            ))
        }
    })
}

/// The token inputs, layout and mode both reduction entry points decode.
#[allow(clippy::too_many_arguments)]
fn reduce_inputs(
    logp: u64,
    mask: u64,
    weights: u64,
    n_tokens: i64,
    cu_seqlens: u64,
    n_seqs: i64,
    seq_len: i64,
    mode: u32,
) -> Result<(SeqReducePtrs, usize, DeviceSeqLayout, ReduceMode)> {
    Ok((
        SeqReducePtrs { logp, mask, weights, ref_logp: 0 },
        size("n_tokens", n_tokens)?,
        seq_layout(cu_seqlens, n_seqs, seq_len)?,
        reduce_mode(mode)?,
    ))
}

/// Per-sequence scores of masked per-token log-probs ([`Gpu::seq_reduce_raw`]): `mode` 0 sum,
/// 1 mean, 2 weighted sum, 3 weighted mean; `cu_seqlens` 0 selects the padded layout. Writes
/// `scores` (`[n_seqs]` f32, or 0) and `stats` (`[n_seqs, 10]` f32, or 0; the backward needs them).
///
/// # Safety
/// As [`Gpu::seq_reduce_raw`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_seq_reduce(
    device: i32,
    stream: u64,
    logp: u64,
    mask: u64,
    weights: u64,
    n_tokens: i64,
    cu_seqlens: u64,
    n_seqs: i64,
    seq_len: i64,
    mode: u32,
    scores: u64,
    stats: u64,
    status: u64,
) -> i32 {
    ffi(|| {
        let (tokens, n, layout, mode) =
            reduce_inputs(logp, mask, weights, n_tokens, cu_seqlens, n_seqs, seq_len, mode)?;
        // SAFETY: forwarded to the caller.
        unsafe { gpu(device)?.seq_reduce_raw(stream, &tokens, n, layout, mode, scores, stats, status) }
    })
}

/// The backward of [`prefk_seq_reduce`]: `grad_logp[t] = dscores[s] · d score_s / d logp_t`
/// (`[n_tokens]` f32, 0 on masked tokens), from the forward's `stats`.
///
/// # Safety
/// As [`Gpu::seq_reduce_backward_raw`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_seq_reduce_backward(
    device: i32,
    stream: u64,
    logp: u64,
    mask: u64,
    weights: u64,
    n_tokens: i64,
    cu_seqlens: u64,
    n_seqs: i64,
    seq_len: i64,
    mode: u32,
    dscores: u64,
    stats: u64,
    grad_logp: u64,
) -> i32 {
    ffi(|| {
        let (tokens, n, layout, mode) =
            reduce_inputs(logp, mask, weights, n_tokens, cu_seqlens, n_seqs, seq_len, mode)?;
        let ptrs = TokenGradPtrs { dscores, stats, grad_logp };
        // SAFETY: forwarded to the caller.
        unsafe { gpu(device)?.seq_reduce_backward_raw(stream, &tokens, n, layout, mode, &ptrs) }
    })
}

/// One loss term of the C ABI: `kind` uses the `PREFK_LOSS_*` codes of `kernels/params.h`;
/// `p0`/`p1`/`flags` as there (label smoothing / epsilon / tau / alpha, gamma / lambda, hinge /
/// barrier denominator; TAB-PO's `flags` bit 8 selects weighted-sum scores).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefkLossTerm {
    /// `PREFK_LOSS_*`.
    pub kind: u32,
    /// Weight of the term.
    pub weight: f32,
    /// β.
    pub beta: f32,
    /// First extra hyperparameter.
    pub p0: f32,
    /// Second extra hyperparameter.
    pub p1: f32,
    /// Switches.
    pub flags: u32,
}

fn loss_of(t: &PrefkLossTerm) -> Result<Loss> {
    let beta = t.beta;
    Ok(match t.kind {
        0 => Loss::Sigmoid { beta, label_smoothing: t.p0 },
        1 => Loss::Robust { beta, label_smoothing: t.p0 },
        2 => Loss::Hinge { beta },
        3 => Loss::Ipo { beta },
        4 => Loss::ExoPair { beta, epsilon: t.p0 },
        5 => Loss::NcaPair { beta },
        6 => Loss::BcoPair { beta },
        7 => Loss::SppoHard { beta },
        8 => Loss::ApoZero { beta },
        9 => Loss::ApoDown { beta },
        10 => Loss::DiscoPop { beta, tau: t.p0 },
        11 => Loss::SimPo { beta, gamma: t.p1, label_smoothing: t.p0, hinge: t.flags & 1 != 0 },
        12 => Loss::Cpo { beta, label_smoothing: t.p0, hinge: t.flags & 1 != 0 },
        13 => Loss::Orpo { beta },
        14 => Loss::Tgdpo { beta, alpha: t.p0 },
        15 => Loss::TabPo {
            beta,
            tau: t.p0,
            lambda: t.p1,
            barrier: match t.flags & 0xff {
                0 => BarrierDenominator::GatedWeightMassClamp1,
                1 => BarrierDenominator::GatedCountClamp1,
                2 => BarrierDenominator::GatedWeightMassEps,
                f => return Err(invalid("flags", format!("TAB-PO barrier denominator 0, 1 or 2, got {f}"))),
            },
            seq_norm: if t.flags & 0x100 != 0 { ReduceMode::WeightedSum } else { ReduceMode::WeightedMean },
        },
        16 => Loss::Nll,
        17 => Loss::SigmoidNorm { beta },
        18 => Loss::Aot { beta, label_smoothing: t.p0 },
        19 => Loss::AotUnpaired { beta, label_smoothing: t.p0 },
        k => {
            return Err(invalid(
                "kind",
                format!("unknown loss kind {k} (see PREFK_LOSS_* in kernels/params.h)"),
            ))
        }
    })
}

/// The loss configuration of the C ABI's loss terms, f-divergence and aggregation codes.
///
/// # Safety
/// `terms` is null or points to `n_terms` host structs.
unsafe fn loss_config(
    terms: *const PrefkLossTerm,
    n_terms: u32,
    divergence: u32,
    alpha: f32,
    aggregation: u32,
    grad_scale: f32,
) -> Result<LossConfig> {
    if terms.is_null() || n_terms == 0 || n_terms as usize > crate::pref_loss::MAX_LOSS_TERMS {
        return Err(invalid("terms", format!("need 1 to {} terms", crate::pref_loss::MAX_LOSS_TERMS)));
    }
    // SAFETY: the caller passes n_terms host structs at `terms`.
    let raw_terms = unsafe { std::slice::from_raw_parts(terms, n_terms as usize) };
    Ok(LossConfig {
        terms: raw_terms.iter().map(|t| Ok((loss_of(t)?, t.weight))).collect::<Result<_>>()?,
        divergence: match divergence {
            0 => FDivergence::ReverseKl,
            1 => FDivergence::ForwardKl,
            2 => FDivergence::JensenShannon,
            3 => FDivergence::Alpha { alpha },
            d => return Err(invalid("divergence", format!("0..=3, got {d}"))),
        },
        aggregation: reduce_mode(aggregation)?,
        grad_scale,
    })
}

/// The preference loss on per-token log-probs ([`Gpu::preference_loss_raw`]). `cu_seqlens` 0
/// selects the padded layout (`seq_len` tokens per sequence); `chosen` 0 selects first-half-chosen
/// pairs. `aggregation` is the DPO-family `ReduceMode` code, `divergence` the `PREFK_DIV_*` code.
/// `seq_weights` (`[S]` f32, or 0) are WPO's detached sequence weights.
///
/// # Safety
/// As [`Gpu::preference_loss_raw`]; `terms` points to `n_terms` host structs.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_preference_loss(
    device: i32,
    stream: u64,
    logp: u64,
    mask: u64,
    weights: u64,
    ref_logp: u64,
    ref_seq: u64,
    seq_weights: u64,
    n_tokens: i64,
    cu_seqlens: u64,
    n_seqs: i64,
    seq_len: i64,
    chosen: u64,
    rejected: u64,
    n_pairs: i64,
    terms: *const PrefkLossTerm,
    n_terms: u32,
    divergence: u32,
    alpha: f32,
    aggregation: u32,
    grad_scale: f32,
    pair_out: u64,
    metrics: u64,
    grad_logp: u64,
    workspace: u64,
    status: u64,
) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes n_terms host structs at `terms`.
        let cfg = unsafe { loss_config(terms, n_terms, divergence, alpha, aggregation, grad_scale) }?;
        let layout = seq_layout(cu_seqlens, n_seqs, seq_len)?;
        let pairs = if chosen == 0 {
            RawPairs::FirstHalfChosen
        } else {
            RawPairs::Explicit { chosen, rejected, n_pairs: size("n_pairs", n_pairs)? }
        };
        let tokens = SeqReducePtrs { logp, mask, weights, ref_logp };
        let ptrs = PairLossPtrs { ref_seq, seq_weights, pair_out, metrics, grad_logp, workspace, status };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.preference_loss_raw(
                stream,
                &tokens,
                size("n_tokens", n_tokens)?,
                layout,
                pairs,
                &cfg,
                &ptrs,
            )
        }
    })
}

/// f32 elements of workspace [`prefk_preference_loss`] needs.
#[no_mangle]
/// Negative inputs count as 0; a size beyond `i64::MAX` returns -1.
pub extern "C" fn prefk_preference_loss_workspace_len(n_seqs: i64, n_pairs: i64) -> i64 {
    let n = crate::pref_loss::preference_loss_workspace_len(n_seqs.max(0) as usize, n_pairs.max(0) as usize);
    i64::try_from(n).unwrap_or(-1)
}

/// The GRPO-family configuration of the C ABI (see [`GrpoConfig`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefkGrpoConfig {
    /// 0 grpo, 1 bnpo, 2 dr_grpo, 3 dapo, 4 cispo, 5 sapo, 6 luspo, 7 vespo.
    pub loss_type: u32,
    /// 0 token, 1 sequence (GSPO).
    pub importance: u32,
    /// ε_lo.
    pub epsilon_low: f32,
    /// ε_hi.
    pub epsilon_high: f32,
    /// δ; 0 = no cap.
    pub delta: f32,
    /// β of the k3 KL term.
    pub beta: f32,
    /// Non-zero: k3 times the ratio.
    pub bias_corrected_kl: u32,
    /// Entropy bonus coefficient.
    pub entropy_coef: f32,
    /// TRL `top_entropy_quantile` (1 = off).
    pub top_entropy_quantile: f32,
    /// Gradient scale.
    pub grad_scale: f32,
    /// dr_grpo's max_completion_length; dapo / cispo / vespo normalizer (0 = the local token
    /// count).
    pub agg_param: f32,
    /// SAPO τ for positive advantages.
    pub tau_pos: f32,
    /// SAPO τ otherwise.
    pub tau_neg: f32,
    /// G, the gradient-accumulation steps (TRL `current_gradient_accumulation_steps`); 0 counts
    /// as 1.
    pub accumulation_steps: u32,
    /// TRL `off_policy_mask_threshold`; NaN = off.
    pub off_policy_mask_threshold: f32,
    /// VESPO gamma parameters k, λ for A ≥ 0 and for A < 0 (TRL defaults 2, 3, 3, 2).
    pub vespo_k_pos: f32,
    /// See `vespo_k_pos`.
    pub vespo_lambda_pos: f32,
    /// See `vespo_k_pos`.
    pub vespo_k_neg: f32,
    /// See `vespo_k_pos`.
    pub vespo_lambda_neg: f32,
}

fn grpo_config_of(c: &PrefkGrpoConfig) -> Result<GrpoConfig> {
    let normalizer = (c.agg_param != 0.0).then_some(c.agg_param);
    let loss_type = match c.loss_type {
        0 => GrpoLossType::Grpo,
        1 => GrpoLossType::Bnpo,
        2 => {
            ensure(
                c.agg_param.is_finite() && c.agg_param >= 1.0 && c.agg_param.fract() == 0.0,
                "agg_param",
                || {
                    format!(
                        "dr_grpo's max_completion_length must be a whole number >= 1, got {}",
                        c.agg_param
                    )
                },
            )?;
            GrpoLossType::DrGrpo { max_completion_length: c.agg_param as usize }
        }
        3 => GrpoLossType::Dapo { normalizer },
        4 => GrpoLossType::Cispo { normalizer },
        5 => GrpoLossType::Sapo { tau_pos: c.tau_pos, tau_neg: c.tau_neg },
        6 => GrpoLossType::Luspo,
        7 => GrpoLossType::Vespo {
            normalizer,
            k_pos: c.vespo_k_pos,
            lambda_pos: c.vespo_lambda_pos,
            k_neg: c.vespo_k_neg,
            lambda_neg: c.vespo_lambda_neg,
        },
        k => {
            return Err(invalid(
                "loss_type",
                format!("0..=7 (grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo), got {k}"),
            ))
        }
    };
    Ok(GrpoConfig {
        loss_type,
        importance: match c.importance {
            0 => ImportanceLevel::Token,
            1 => ImportanceLevel::Sequence,
            k => return Err(invalid("importance", format!("0 (token) or 1 (sequence), got {k}"))),
        },
        epsilon_low: c.epsilon_low,
        epsilon_high: c.epsilon_high,
        delta: (c.delta != 0.0).then_some(c.delta),
        beta: c.beta,
        bias_corrected_kl: c.bias_corrected_kl != 0,
        entropy_coef: c.entropy_coef,
        top_entropy_quantile: c.top_entropy_quantile as f64,
        off_policy_mask_threshold: (!c.off_policy_mask_threshold.is_nan())
            .then_some(c.off_policy_mask_threshold),
        accumulation_steps: c.accumulation_steps.max(1),
        grad_scale: c.grad_scale,
    })
}

fn seq_layout(cu_seqlens: u64, n_seqs: i64, seq_len: i64) -> Result<DeviceSeqLayout> {
    let n_seqs = size("n_seqs", n_seqs)?;
    Ok(if cu_seqlens != 0 {
        DeviceSeqLayout::Packed { cu_seqlens, n_seqs }
    } else {
        DeviceSeqLayout::Padded { n_seqs, seq_len: size("seq_len", seq_len)? }
    })
}

/// The GRPO-family loss on per-token log-probs ([`Gpu::grpo_loss_raw`]); per-token pointers may be
/// 0 where optional (old_logp: on-policy; sampling_logp: old_logp; ref_logp: β = 0; mask;
/// is_weights; entropy; grad_entropy). `cu_seqlens` 0 selects the padded layout.
///
/// # Safety
/// As [`Gpu::grpo_loss_raw`]; `config` points to one host struct.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_grpo_loss(
    device: i32,
    stream: u64,
    config: *const PrefkGrpoConfig,
    logp: u64,
    old_logp: u64,
    sampling_logp: u64,
    ref_logp: u64,
    mask: u64,
    is_weights: u64,
    entropy: u64,
    advantages: u64,
    n_tokens: i64,
    cu_seqlens: u64,
    n_seqs: i64,
    seq_len: i64,
    metrics: u64,
    grad_logp: u64,
    grad_entropy: u64,
    workspace: u64,
    status: u64,
) -> i32 {
    ffi(|| {
        ensure(!config.is_null(), "config", || "is null".into())?;
        // SAFETY: the caller passes one host struct at `config`.
        let cfg = grpo_config_of(unsafe { &*config })?;
        let layout = seq_layout(cu_seqlens, n_seqs, seq_len)?;
        let ptrs = GrpoPtrs {
            logp,
            old_logp,
            sampling_logp,
            ref_logp,
            mask,
            is_weights,
            entropy,
            advantages,
            metrics,
            grad_logp,
            grad_entropy,
            workspace,
            status,
        };
        // SAFETY: forwarded to the caller.
        unsafe { gpu(device)?.grpo_loss_raw(stream, &ptrs, size("n_tokens", n_tokens)?, layout, &cfg) }
    })
}

/// f32 elements of workspace [`prefk_grpo_loss`] needs (negative counts as 0; -1 if too large).
#[no_mangle]
pub extern "C" fn prefk_grpo_workspace_len(n_seqs: i64) -> i64 {
    i64::try_from(crate::grpo::grpo_workspace_len(n_seqs.max(0) as usize)).unwrap_or(-1)
}

/// The group loss of the C ABI's codes (see [`prefk_group_loss`]).
fn group_loss_of(
    kind: u32,
    beta: f32,
    p0: f32,
    p1: f32,
    kl_given: f32,
    flags: u32,
    list_size: i64,
) -> Result<GroupLoss> {
    let list_size = size("list_size", list_size)?;
    Ok(match kind {
        0 => GroupLoss::Kto {
            beta,
            desirable_weight: p0,
            undesirable_weight: p1,
            kl: if kl_given.is_nan() { KtoKl::FromSamples } else { KtoKl::Given(kl_given) },
            apo_zero_unpaired: flags & 2 != 0,
        },
        1 => GroupLoss::Lipo { beta, list_size, lambda_weights: flags & 4 != 0 },
        2 => GroupLoss::Pro { list_size, sft_weight: p0 },
        k => return Err(invalid("kind", format!("0 (KTO), 1 (LiPO), 2 (PRO), got {k}"))),
    })
}

/// Validates `n_seqs` **host** labels for the group loss given by the codes of
/// [`prefk_group_loss`] (known KTO roles, finite LiPO labels, PRO rewards in ranking order), as the
/// safe API does; the raw entry point uses device labels as given.
///
/// # Safety
/// `labels` is null or valid for `n_seqs` reads.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_group_loss_check_labels(
    kind: u32,
    beta: f32,
    p0: f32,
    p1: f32,
    kl_given: f32,
    flags: u32,
    list_size: i64,
    labels: *const f32,
    n_seqs: i64,
) -> i32 {
    ffi(|| {
        let loss = group_loss_of(kind, beta, p0, p1, kl_given, flags, list_size)?;
        let n = size("n_seqs", n_seqs)?;
        ensure(!labels.is_null() || n == 0, "labels", || "null pointer".into())?;
        // SAFETY: the caller passes n_seqs host floats.
        let host = if n == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(labels, n) } };
        loss.validate(n, host)
    })
}

/// A group / listwise loss ([`Gpu::group_loss_raw`]). `kind` 0 KTO (`p0`/`p1` the desirable /
/// undesirable weights, `kl_given` NaN = from the KL samples, `flags` bit 1 = apo_zero_unpaired),
/// 1 LiPO-λ (`flags` bit 2 = λ weights), 2 PRO (`p0` = sft weight); `list_size` for LiPO / PRO.
///
/// # Safety
/// As [`Gpu::group_loss_raw`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_group_loss(
    device: i32,
    stream: u64,
    kind: u32,
    beta: f32,
    p0: f32,
    p1: f32,
    kl_given: f32,
    flags: u32,
    list_size: i64,
    logp: u64,
    mask: u64,
    ref_logp: u64,
    ref_seq: u64,
    labels: u64,
    n_tokens: i64,
    cu_seqlens: u64,
    n_seqs: i64,
    seq_len: i64,
    grad_scale: f32,
    seq_out: u64,
    metrics: u64,
    grad_logp: u64,
    workspace: u64,
    status: u64,
) -> i32 {
    ffi(|| {
        let loss = group_loss_of(kind, beta, p0, p1, kl_given, flags, list_size)?;
        let layout = seq_layout(cu_seqlens, n_seqs, seq_len)?;
        let tokens = SeqReducePtrs { logp, mask, weights: 0, ref_logp };
        let ptrs = GroupLossPtrs { ref_seq, labels, seq_out, metrics, grad_logp, workspace, status };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.group_loss_raw(
                stream,
                &tokens,
                size("n_tokens", n_tokens)?,
                layout,
                &loss,
                grad_scale,
                &ptrs,
            )
        }
    })
}

/// f32 elements of workspace [`prefk_group_loss`] needs (negative counts as 0; -1 if too large).
#[no_mangle]
pub extern "C" fn prefk_group_loss_workspace_len(n_seqs: i64) -> i64 {
    i64::try_from(crate::group_loss::group_loss_workspace_len(n_seqs.max(0) as usize)).unwrap_or(-1)
}

/// Shape and layout arguments of the attention entry points.
fn attn_args(
    heads_dim: [i32; 3],
    scale: f32,
    tiles: u64,
    seg_lo2: u64,
    n_tiles: i64,
    n_tokens: i64,
) -> Result<(AttnShape, RawPrefixLayout)> {
    let [q_heads, kv_heads, head_dim] = heads_dim;
    let shape = AttnShape {
        q_heads: size("q_heads", q_heads as i64)?,
        kv_heads: size("kv_heads", kv_heads as i64)?,
        head_dim: size("head_dim", head_dim as i64)?,
        scale,
    };
    let layout = RawPrefixLayout {
        tiles,
        seg_lo2,
        n_tiles: size("n_tiles", n_tiles)?,
        n_tokens: size("n_tokens", n_tokens)?,
    };
    Ok((shape, layout))
}

/// Shared-prefix attention forward ([`Gpu::prefix_attn_forward_raw`]); `tiles`/`seg_lo2` hold the
/// device copy of the layout (`SharedPrefixLayout::tiles` flattened, segment starts).
///
/// # Safety
/// As [`Gpu::prefix_attn_forward_raw`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_prefix_attn_forward(
    device: i32,
    stream: u64,
    dtype_code: u32,
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    lse: u64,
    tiles: u64,
    seg_lo2: u64,
    n_tiles: i64,
    n_tokens: i64,
    q_heads: i32,
    kv_heads: i32,
    head_dim: i32,
    scale: f32,
) -> i32 {
    ffi(|| {
        let (shape, layout) =
            attn_args([q_heads, kv_heads, head_dim], scale, tiles, seg_lo2, n_tiles, n_tokens)?;
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.prefix_attn_forward_raw(
                stream,
                dtype(dtype_code)?,
                shape,
                &layout,
                &PrefixAttnFwdPtrs { q, k, v, o, lse },
            )
        }
    })
}

/// Shared-prefix attention backward ([`Gpu::prefix_attn_backward_raw`]); `delta` is a `Hq * T`
/// f32 workspace.
///
/// # Safety
/// As [`Gpu::prefix_attn_backward_raw`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_prefix_attn_backward(
    device: i32,
    stream: u64,
    dtype_code: u32,
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    lse: u64,
    dout: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    delta: u64,
    tiles: u64,
    seg_lo2: u64,
    n_tiles: i64,
    n_tokens: i64,
    q_heads: i32,
    kv_heads: i32,
    head_dim: i32,
    scale: f32,
) -> i32 {
    ffi(|| {
        let (shape, layout) =
            attn_args([q_heads, kv_heads, head_dim], scale, tiles, seg_lo2, n_tiles, n_tokens)?;
        let ptrs = PrefixAttnBwdPtrs { fwd: PrefixAttnFwdPtrs { q, k, v, o, lse }, dout, dq, dk, dv, delta };
        // SAFETY: forwarded to the caller.
        unsafe { gpu(device)?.prefix_attn_backward_raw(stream, dtype(dtype_code)?, shape, &layout, &ptrs) }
    })
}

/// Builds a shared-prefix layout from lengths on the host: group b has prefix `prefix_lens[b]` and
/// `resp_counts[b]` responses whose lengths follow in `resp_lens` (all groups' concatenated).
/// Writes `n_tokens` and `n_tiles`; when `tiles` / `seg_lo2` are non-null (host buffers of
/// `8 * n_tiles` and `n_tokens` i32) fills them for upload to the device.
///
/// # Safety
/// The length arrays hold `n_groups` (and `sum(resp_counts)`) host elements; output pointers are
/// null or host buffers of the sizes above (call once with nulls to size them).
#[no_mangle]
pub unsafe extern "C" fn prefk_prefix_layout(
    prefix_lens: *const i64,
    resp_counts: *const i64,
    resp_lens: *const i64,
    n_groups: i64,
    n_tokens: *mut i64,
    n_tiles: *mut i64,
    tiles: *mut i32,
    seg_lo2: *mut i32,
) -> i32 {
    ffi(|| {
        let n = size("n_groups", n_groups)?;
        if prefix_lens.is_null()
            || resp_counts.is_null()
            || resp_lens.is_null()
            || n_tokens.is_null()
            || n_tiles.is_null()
        {
            return Err(invalid("prefix_lens", "null host pointer"));
        }
        // SAFETY: the caller passes n_groups elements.
        let (pl, rc) = unsafe {
            (std::slice::from_raw_parts(prefix_lens, n), std::slice::from_raw_parts(resp_counts, n))
        };
        let total_resp = rc.iter().try_fold(0usize, |acc, &c| {
            acc.checked_add(size("resp_counts", c)?).ok_or_else(|| invalid("resp_counts", "sum overflows"))
        })?;
        // SAFETY: the caller passes sum(resp_counts) elements.
        let rl = unsafe { std::slice::from_raw_parts(resp_lens, total_resp) };
        let mut groups = Vec::with_capacity(n);
        let mut off = 0;
        for b in 0..n {
            let c = rc[b] as usize;
            let resp = rl[off..off + c].iter().map(|&r| size("resp_lens", r)).collect::<Result<Vec<_>>>()?;
            groups.push(crate::prefix_attn::PrefixGroup {
                prefix_len: size("prefix_lens", pl[b])?,
                resp_lens: resp,
            });
            off += c;
        }
        let layout = crate::prefix_attn::SharedPrefixLayout::from_lengths(groups)?;
        let t = layout.tiles();
        // SAFETY: non-null output pointers are valid host memory (see # Safety).
        unsafe {
            *n_tokens = layout.total_tokens() as i64;
            *n_tiles = t.len() as i64;
            if !tiles.is_null() {
                std::ptr::copy_nonoverlapping(t.as_flattened().as_ptr(), tiles, t.len() * 8);
            }
            if !seg_lo2.is_null() {
                for (i, s) in layout.token_segments().iter().enumerate() {
                    *seg_lo2.add(i) = s[2] as i32;
                }
            }
        }
        Ok(())
    })
}

/// Turns a status word the kernels wrote (the `status` argument of the entry points, read back
/// by the caller) into the crate's error: 0 when no bit is set, else -1 with the message in
/// [`prefk_last_error`].
#[no_mangle]
pub extern "C" fn prefk_check_status(status: u32) -> i32 {
    ffi(|| crate::runtime::status::check_status(status))
}

/// Registers caller-owned host memory (a CPU tensor's storage) with the emulator, so that the
/// entry points above accept it as device memory of [`PREFK_DEVICE_EMULATOR`] with every check on:
/// accesses outside the range are reported and, when `initialized` is 0, so are reads before a
/// write. Register each storage once (overlapping a live registration is an error) and call
/// [`prefk_unregister_host_memory`] before the memory is freed.
///
/// # Safety
/// `[ptr, ptr + bytes)` is valid, writable host memory that outlives the registration.
#[no_mangle]
pub unsafe extern "C" fn prefk_register_host_memory(ptr: u64, bytes: i64, initialized: i32) -> i32 {
    ffi(|| {
        let bytes = size("bytes", bytes)?;
        ensure(ptr != 0 && bytes > 0, "ptr", || "a non-null pointer and a non-empty range".into())?;
        // SAFETY: forwarded to the caller.
        unsafe { crate::runtime::emulator::register_host(ptr, bytes, initialized != 0) }
    })
}

/// Ends a [`prefk_register_host_memory`] registration; the memory stays the caller's.
#[no_mangle]
pub extern "C" fn prefk_unregister_host_memory(ptr: u64) -> i32 {
    ffi(|| crate::runtime::emulator::unregister_host(ptr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: prefk_last_error returns a valid NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(prefk_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn errors_are_codes_and_messages_never_panics() {
        // SAFETY: every call is rejected before touching memory (bad codes, no device here or
        // null pointers).
        let rc =
            unsafe { prefk_token_logprobs_forward(0, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 4, 10, 10, -100, 1.0) };
        assert_eq!(rc, -1);
        let msg = last();
        assert!(msg.contains("dtype") || msg.contains("driver") || msg.contains("kernels"), "{msg}");
        assert_eq!(
            unsafe {
                prefk_token_logprobs_forward(-1, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 4, 10, 10, -100, 1.0)
            },
            -1
        );
        assert!(last().contains("device"));
        let term = PrefkLossTerm { kind: 99, ..Default::default() };
        let rc = unsafe {
            prefk_preference_loss(
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, &term, 1, 0, 0.0, 0, 1.0, 0, 0, 0, 0, 0,
            )
        };
        assert_eq!(rc, -1);
        assert!(last().contains("unknown loss kind"), "{}", last());
        assert_eq!(prefk_preference_loss_workspace_len(4, 2), 4 * 13 + 2 * (6 + 8));
    }

    #[test]
    fn layout_builder_matches_the_rust_layout() {
        let (pl, rc, rl) = ([3i64, 0], [2i64, 1], [2i64, 70, 5]);
        let (mut nt, mut ntiles) = (0i64, 0i64);
        // SAFETY: host arrays of the documented sizes.
        assert_eq!(
            unsafe {
                prefk_prefix_layout(
                    pl.as_ptr(),
                    rc.as_ptr(),
                    rl.as_ptr(),
                    2,
                    &mut nt,
                    &mut ntiles,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            },
            0
        );
        let (mut tiles, mut lo2) = (vec![0i32; ntiles as usize * 8], vec![0i32; nt as usize]);
        // SAFETY: as above, with buffers sized by the first call.
        assert_eq!(
            unsafe {
                prefk_prefix_layout(
                    pl.as_ptr(),
                    rc.as_ptr(),
                    rl.as_ptr(),
                    2,
                    &mut nt,
                    &mut ntiles,
                    tiles.as_mut_ptr(),
                    lo2.as_mut_ptr(),
                )
            },
            0
        );
        let l = crate::prefix_attn::SharedPrefixLayout::from_lengths(vec![
            crate::prefix_attn::PrefixGroup { prefix_len: 3, resp_lens: vec![2, 70] },
            crate::prefix_attn::PrefixGroup { prefix_len: 0, resp_lens: vec![5] },
        ])
        .unwrap();
        assert_eq!(nt as usize, l.total_tokens());
        assert_eq!(tiles, l.tiles().into_iter().flatten().collect::<Vec<_>>());
        assert_eq!(lo2, l.token_segments().iter().map(|s| s[2] as i32).collect::<Vec<_>>());
        let bad = [0i64];
        // SAFETY: host arrays of the documented sizes.
        assert_eq!(
            unsafe {
                prefk_prefix_layout(
                    bad.as_ptr(),
                    [1i64].as_ptr(),
                    bad.as_ptr(),
                    1,
                    &mut nt,
                    &mut ntiles,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            },
            -1
        );
        assert!(last().contains("empty"), "{}", last());
    }

    #[test]
    fn loss_codes_round_trip_through_the_kernel_codes() {
        for kind in 0..=16u32 {
            let t = PrefkLossTerm { kind, weight: 1.0, beta: 0.5, p0: 0.1, p1: 0.5, flags: 0 };
            let loss = loss_of(&t).unwrap();
            let cfg = LossConfig::single(loss);
            assert_eq!(crate::pref_loss::launch::kind_code(&loss, &cfg), kind);
        }
    }
}
