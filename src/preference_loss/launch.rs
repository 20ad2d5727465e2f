//! GPU launch of the preference losses: statistics (`seq_stats`), the pair kernel
//! (`kernels/preference_loss.cu`) and the per-token gradient (`token_grad`), three small launches that
//! read only per-token f32 data (never the logits).
use crate::runtime::mem::{
    optional_ptr, read_metrics, DeviceBuffer, DevicePtr, DevicePtrMut, Guard, Stream, View, ViewMut,
};

use super::{
    BarrierDenominator, FDivergence, Loss, LossConfig, RefSource, METRICS_LEN, METRIC_NAMES, PAIR_COLUMNS,
};
use crate::error::{ensure, Result};
use crate::params::{LossTerm, PreferenceLossParams, MAX_LOSS_TERMS};
use crate::runtime::args::{check_ptr, check_span};
use crate::runtime::status::{check_status, StatusWord};
use crate::runtime::Gpu;
use crate::seq_reduce::{
    DeviceSeqLayout, DeviceSeqs, DeviceTokens, ReduceMode, SeqReducePtrs, SEQ_STATS_LEN,
};

/// Pairs on the device (raw API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawPairs {
    /// Pair i = (i, i + S/2).
    FirstHalfChosen,
    /// Device pointers to `n_pairs` i32 chosen and rejected sequence indices (range-checked on
    /// the device: `STATUS_BAD_PAIR`).
    Explicit {
        /// Chosen indices.
        chosen: u64,
        /// Rejected indices.
        rejected: u64,
        /// Number of pairs.
        n_pairs: usize,
    },
}

/// Pairs for the safe API.
pub enum DevicePairs<'a> {
    /// Pair i = (i, i + S/2).
    FirstHalfChosen,
    /// Explicit chosen / rejected sequence indices already on the device (range-checked by the
    /// kernel: an out-of-range index is reported after the launch as `Error::DeviceCheck`).
    Explicit {
        /// Chosen indices (i32).
        chosen: View<'a, i32>,
        /// Rejected indices (i32).
        rejected: View<'a, i32>,
    },
    /// Explicit indices on the host: validated before any launch, then uploaded.
    Host {
        /// Chosen indices.
        chosen: &'a [i32],
        /// Rejected indices.
        rejected: &'a [i32],
    },
}

/// Device-resident pair indices and the guards of their borrows.
pub(crate) struct PairsOnDevice<'s> {
    pub(crate) raw: RawPairs,
    _guards: Vec<Guard<'s>>,
}

impl DevicePairs<'_> {
    /// Number of pairs for `n_seqs` sequences (after checking explicit lengths agree).
    pub(crate) fn n_pairs(&self, n_seqs: usize) -> Result<usize> {
        match self {
            DevicePairs::FirstHalfChosen => Ok(n_seqs / 2),
            DevicePairs::Explicit { chosen, rejected } => {
                crate::error::ensure_len("rejected", rejected.len(), chosen.len())?;
                Ok(chosen.len())
            }
            DevicePairs::Host { chosen, rejected } => {
                super::Pairs::Explicit { chosen, rejected }.validate(n_seqs)?;
                Ok(chosen.len())
            }
        }
    }

    /// Host pairs are uploaded into `upload` (which must outlive the returned value).
    pub(crate) fn on_device<'s>(
        &'s self,
        stream: &'s Stream,
        upload: &'s mut Option<(DeviceBuffer<i32>, DeviceBuffer<i32>)>,
    ) -> Result<PairsOnDevice<'s>> {
        let ((cp, g0), (rp, g1), n_pairs) = match self {
            DevicePairs::FirstHalfChosen => {
                return Ok(PairsOnDevice { raw: RawPairs::FirstHalfChosen, _guards: Vec::new() })
            }
            DevicePairs::Explicit { chosen, rejected } => {
                (chosen.device_ptr(stream)?, rejected.device_ptr(stream)?, chosen.len())
            }
            DevicePairs::Host { chosen, rejected } => {
                let (c, r) = upload.insert((stream.clone_htod(chosen)?, stream.clone_htod(rejected)?));
                (c.device_ptr(stream)?, r.device_ptr(stream)?, chosen.len())
            }
        };
        Ok(PairsOnDevice {
            raw: RawPairs::Explicit { chosen: cp, rejected: rp, n_pairs },
            _guards: vec![g0, g1],
        })
    }
}

/// The batch a sub-batch of pairs belongs to: the denominators of its means, so that a loss
/// evaluated chunk by chunk ([`Gpu::preference_loss_raw_in_batch`], as the fused LM head step does)
/// gives the whole batch's gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubBatch {
    /// Pairs in the batch (0: the sub-batch is the batch).
    pub pairs: usize,
    /// Chosen tokens of the batch the NLL term averages over (< 0: count them in the sub-batch).
    pub nll_count: f32,
}

impl SubBatch {
    /// The sub-batch is the whole batch.
    pub const WHOLE: SubBatch = SubBatch { pairs: 0, nll_count: -1.0 };
}

/// Output and workspace pointers of [`Gpu::preference_loss_raw`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PreferenceLossPtrs {
    /// `[S]` f32 per-sequence reference scores, or 0 (then `tokens.ref_logp` must be given for
    /// losses that need a reference).
    pub ref_seq: u64,
    /// `[S]` f32 detached sequence weights (WPO, [`super::reference::wpo_weights`]), or 0: every
    /// pair's loss is multiplied by `w_c · w_r`.
    pub seq_weights: u64,
    /// Output `[n_pairs, PAIR_COLUMNS]` f32, or 0.
    pub pair_out: u64,
    /// Output `[METRICS_LEN]` f32 (required).
    pub metrics: u64,
    /// Output `[n_tokens]` f32 dL/dlogp (required).
    pub grad_logp: u64,
    /// Workspace of [`preference_loss_workspace_len`] f32 (required).
    pub workspace: u64,
    /// u32 status word, or 0.
    pub status: u64,
}

/// f32 elements of workspace the raw loss needs: statistics, sequence and pair coefficients, and
/// the AOT sort columns.
pub fn preference_loss_workspace_len(n_seqs: usize, n_pairs: usize) -> usize {
    // Saturating: an impossible size stays impossible (allocation and validation refuse it)
    // instead of wrapping to a small one.
    n_seqs
        .saturating_mul(SEQ_STATS_LEN + 3)
        .saturating_add(n_pairs.saturating_mul(PAIR_COEF_LEN + PAIR_SORT_LEN))
}

/// Workspace f32 per pair: gradient coefficients (`PREFK_PAIR_COEF`).
const PAIR_COEF_LEN: usize = 6;
/// Workspace f32 per pair: the AOT sort columns (`PREFK_PAIR_SORT`).
const PAIR_SORT_LEN: usize = 8;

/// Results of the safe loss API (read back to the host).
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceLossOutputs {
    /// Batch loss.
    pub loss: f32,
    /// Metrics, indexed as [`METRIC_NAMES`] (the rest reserved).
    pub metrics: [f32; METRICS_LEN],
    /// Per pair, columns as [`super::PAIR_COLUMN_NAMES`].
    pub pairs: Vec<[f32; PAIR_COLUMNS]>,
}

impl PreferenceLossOutputs {
    /// A metric by its trainer-facing name (e.g. `"rewards/margins"`).
    pub fn metric(&self, name: &str) -> Option<f32> {
        METRIC_NAMES.iter().position(|n| *n == name).map(|i| self.metrics[i])
    }
}

fn term_params(loss: &Loss, weight: f32, cfg: &LossConfig) -> LossTerm {
    let (kind, p0, p1, flags) = match *loss {
        Loss::Sigmoid { label_smoothing, .. } => (0, label_smoothing, 0.0, 0),
        Loss::Robust { label_smoothing, .. } => (1, label_smoothing, 0.0, 0),
        Loss::Hinge { .. } => (2, 0.0, 0.0, 0),
        Loss::Ipo { .. } => (3, 0.0, 0.0, 0),
        Loss::ExoPair { epsilon, .. } => (4, epsilon, 0.0, 0),
        Loss::NcaPair { .. } => (5, 0.0, 0.0, 0),
        Loss::BcoPair { .. } => (6, 0.0, 0.0, 0),
        Loss::SppoHard { .. } => (7, 0.0, 0.0, 0),
        Loss::ApoZero { .. } => (8, 0.0, 0.0, 0),
        Loss::ApoDown { .. } => (9, 0.0, 0.0, 0),
        Loss::DiscoPop { tau, .. } => (10, tau, 0.0, 0),
        Loss::SimPo { gamma, label_smoothing, hinge, .. } => (11, label_smoothing, gamma, hinge as u32),
        Loss::Cpo { label_smoothing, hinge, .. } => (12, label_smoothing, 0.0, hinge as u32),
        Loss::Orpo { .. } => (13, 0.0, 0.0, 0),
        Loss::Tgdpo { alpha, .. } => (14, alpha, 0.0, 0),
        Loss::TabPo { tau, lambda, barrier, .. } => (15, tau, lambda, barrier as u32),
        Loss::Nll => (16, 0.0, 0.0, 0),
        Loss::SigmoidNorm { .. } => (17, 0.0, 0.0, 0),
        Loss::Aot { label_smoothing, .. } => (18, label_smoothing, 0.0, 0),
        Loss::AotUnpaired { label_smoothing, .. } => (19, label_smoothing, 0.0, 0),
    };
    LossTerm {
        kind,
        weight,
        beta: loss.beta(),
        p0,
        p1,
        p2: 0.0,
        agg: loss.aggregation(cfg.aggregation) as u32,
        flags,
    }
}

const _: () = assert!(BarrierDenominator::GatedWeightMassEps as u32 == 2);

/// The kernel's `PREFK_LOSS_*` code of a term.
#[cfg(test)]
pub(crate) fn kind_code(loss: &Loss, cfg: &LossConfig) -> u32 {
    term_params(loss, 1.0, cfg).kind
}

impl Gpu {
    /// The preference loss on raw device pointers: three launches on `stream` (statistics, pair
    /// kernel, token gradient), no synchronization. Writes `metrics`, `pair_out` (if non-zero)
    /// and `grad_logp` (dL/dlogp for every token; 0 on masked tokens and tokens in no pair).
    ///
    /// Errors before launch: invalid config (β ≤ 0, τ outside (0, 1), label smoothing outside
    /// [0, 0.5), ...), missing reference or weights for the configured terms, both per-token and
    /// per-sequence references, null/misaligned pointers, odd S for `FirstHalfChosen`, no pairs.
    /// Device-side (status word): bad `cu_seqlens`, out-of-range pair indices.
    ///
    /// # Safety
    /// Non-zero pointers are device memory of this context: per-token arrays of `n_tokens`
    /// elements, `cu_seqlens` of `S + 1` i32, pair arrays of `n_pairs` i32, `ref_seq` of S f32,
    /// outputs as documented on [`PreferenceLossPtrs`], a workspace of
    /// [`preference_loss_workspace_len`]`(S, n_pairs)` f32; all alive and not concurrently written
    /// until the work completes in stream order. `stream` is 0 or a live CUstream of this context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn preference_loss_raw(
        &self,
        stream: u64,
        tokens: &SeqReducePtrs,
        n_tokens: usize,
        layout: DeviceSeqLayout,
        pairs: RawPairs,
        cfg: &LossConfig,
        ptrs: &PreferenceLossPtrs,
    ) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe {
            self.preference_loss_raw_in_batch(
                stream,
                tokens,
                n_tokens,
                layout,
                pairs,
                cfg,
                ptrs,
                SubBatch::WHOLE,
            )
        }
    }

    /// [`Gpu::preference_loss_raw`] on a sub-batch (whole pairs) of a larger batch whose mean
    /// and NLL denominators are `batch`'s: the metrics written are this sub-batch's share (they
    /// sum over sub-batches, except `barrier/active_pct`, whose counts are in slots 12 and 13),
    /// and the gradients are the batch loss's.
    ///
    /// # Safety
    /// As [`Gpu::preference_loss_raw`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn preference_loss_raw_in_batch(
        &self,
        stream: u64,
        tokens: &SeqReducePtrs,
        n_tokens: usize,
        layout: DeviceSeqLayout,
        pairs: RawPairs,
        cfg: &LossConfig,
        ptrs: &PreferenceLossPtrs,
        batch: SubBatch,
    ) -> Result<()> {
        tokens.validate(n_tokens)?;
        layout.validate(n_tokens)?;
        let source = RefSource::from_given(tokens.ref_logp != 0, ptrs.ref_seq != 0)?;
        cfg.validate(source)?;
        ensure(!cfg.needs_weights() || tokens.weights != 0, "weights", || {
            "these losses read token weights (TAB-PO / token-weighted DPO weights, TGDPO rewards); none given"
                .into()
        })?;
        let n_seqs = layout.n_seqs();
        let sorts = cfg.terms.iter().any(|(l, _)| l.sorts_batch());
        ensure(!sorts || ptrs.seq_weights == 0, "seq_weights", || {
            "WPO weighting is refused for aot / aot_unpaired, as TRL: they sort samples, which would \
             misalign per-pair weights"
                .into()
        })?;
        let (chosen, rejected, n_pairs) = match pairs {
            RawPairs::FirstHalfChosen => {
                ensure(n_seqs >= 2 && n_seqs % 2 == 0, "pairs", || {
                    format!("first-half-chosen needs an even number (>= 2) of sequences, got {n_seqs}")
                })?;
                (0, 0, n_seqs / 2)
            }
            RawPairs::Explicit { chosen, rejected, n_pairs } => {
                check_ptr("chosen", chosen, 4, true)?;
                check_ptr("rejected", rejected, 4, true)?;
                ensure(n_pairs >= 1, "pairs", || "need at least one pair".into())?;
                (chosen, rejected, n_pairs)
            }
        };
        ensure(batch.pairs == 0 || batch.pairs >= n_pairs, "batch", || {
            format!("a sub-batch of {n_pairs} pairs cannot belong to a batch of {}", batch.pairs)
        })?;
        ensure(batch.nll_count.is_finite(), "batch", || {
            format!("nll_count must be finite (< 0: count in the sub-batch), got {}", batch.nll_count)
        })?;
        ensure(!sorts || batch.pairs == 0 || batch.pairs == n_pairs, "loss_type", || {
            "aot / aot_unpaired sort the whole batch; a sub-batch (a chunk of the fused LM head) \
             cannot evaluate them: give the batch in one call"
                .into()
        })?;
        for (name, p, required) in [
            ("ref_seq", ptrs.ref_seq, false),
            ("seq_weights", ptrs.seq_weights, false),
            ("pair_out", ptrs.pair_out, false),
            ("metrics", ptrs.metrics, true),
            ("grad_logp", ptrs.grad_logp, n_tokens > 0),
            ("workspace", ptrs.workspace, true),
            ("status", ptrs.status, false),
        ] {
            check_ptr(name, p, 4, required)?;
        }
        check_span("workspace", ptrs.workspace, preference_loss_workspace_len(n_seqs, n_pairs), 4)?;
        let log_tau = cfg.log_tau() as f32;
        let stats = ptrs.workspace;
        let seq_coef = stats + (n_seqs * SEQ_STATS_LEN * 4) as u64;
        let pair_coef = seq_coef + (n_seqs * 3 * 4) as u64;
        let pair_sort = pair_coef + (n_pairs * PAIR_COEF_LEN * 4) as u64;
        let stream_ptr = stream;
        // 1. statistics
        // SAFETY: forwarded to the caller.
        unsafe {
            self.launch_seq_stats(
                stream_ptr,
                tokens,
                n_tokens,
                layout,
                ReduceMode::Sum,
                log_tau,
                stats,
                0,
                ptrs.status,
            )?
        };
        // 2. pairs -> loss, metrics, per-sequence coefficients
        let mut terms = [LossTerm::default(); MAX_LOSS_TERMS];
        for (slot, (loss, weight)) in terms.iter_mut().zip(&cfg.terms) {
            *slot = term_params(loss, *weight, cfg);
        }
        let (divergence, alpha_div) = match cfg.divergence {
            FDivergence::ReverseKl => (0, 1.0),
            FDivergence::ForwardKl => (1, 1.0),
            FDivergence::JensenShannon => (2, 1.0),
            FDivergence::Alpha { alpha } => (3, alpha),
        };
        let params = PreferenceLossParams {
            stats,
            ref_seq: ptrs.ref_seq,
            chosen,
            rejected,
            pair_out: ptrs.pair_out,
            metrics: ptrs.metrics,
            pair_coef,
            seq_coef,
            status: ptrs.status,
            n_seqs: n_seqs as i64,
            n_pairs: n_pairs as i64,
            n_terms: cfg.terms.len() as u32,
            divergence,
            alpha_div,
            grad_scale: cfg.grad_scale,
            terms,
            batch_pairs: batch.pairs as i64,
            batch_nll_count: batch.nll_count,
            flags: u32::from(sorts),
            seq_weights: ptrs.seq_weights,
            pair_sort,
        };
        // One block evaluates every pair (fixed-order batch metrics).
        // SAFETY: forwarded to the caller; params is the kernel's PreferenceLossParams (layout asserted
        // in params.rs).
        unsafe { self.launch(stream_ptr, "preference_loss", (1, 1), &params) }?;
        // 3. per-token gradient
        // SAFETY: forwarded to the caller.
        unsafe {
            self.launch_coef_grad(
                stream_ptr,
                tokens,
                n_tokens,
                layout,
                seq_coef,
                stats,
                log_tau,
                ptrs.grad_logp,
            )
        }
    }

    /// The preference loss on cudarc buffers: writes `grad_logp` (`[T]` f32) and returns the loss,
    /// metrics and per-pair values (one synchronization of `stream` to read them and the status).
    #[allow(clippy::too_many_arguments)]
    pub fn preference_loss(
        &self,
        stream: &Stream,
        tokens: &DeviceTokens<'_>,
        seqs: &DeviceSeqs<'_>,
        pairs: &DevicePairs<'_>,
        ref_seq: Option<&View<'_, f32>>,
        cfg: &LossConfig,
        grad_logp: &mut ViewMut<'_, f32>,
    ) -> Result<PreferenceLossOutputs> {
        self.preference_loss_weighted(stream, tokens, seqs, pairs, ref_seq, None, cfg, grad_logp)
    }

    /// [`Gpu::preference_loss`] with WPO's detached sequence weights `seq_weights` (`[S]` f32, from
    /// [`super::reference::wpo_weights`]'s formula): every pair's loss times `w_c · w_r`.
    #[allow(clippy::too_many_arguments)]
    pub fn preference_loss_weighted(
        &self,
        stream: &Stream,
        tokens: &DeviceTokens<'_>,
        seqs: &DeviceSeqs<'_>,
        pairs: &DevicePairs<'_>,
        ref_seq: Option<&View<'_, f32>>,
        seq_weights: Option<&View<'_, f32>>,
        cfg: &LossConfig,
        grad_logp: &mut ViewMut<'_, f32>,
    ) -> Result<PreferenceLossOutputs> {
        let n_seqs = seqs.n_seqs();
        crate::error::ensure_len("grad_logp", grad_logp.len(), tokens.logp.len())?;
        if let Some(r) = ref_seq {
            crate::error::ensure_len("ref_seq", r.len(), n_seqs)?;
        }
        if let Some(w) = seq_weights {
            crate::error::ensure_len("seq_weights", w.len(), n_seqs)?;
        }
        let n_pairs = pairs.n_pairs(n_seqs)?;
        let mut work = stream.alloc_zeros::<f32>(preference_loss_workspace_len(n_seqs, n_pairs).max(1))?;
        let mut metrics = stream.alloc_zeros::<f32>(METRICS_LEN)?;
        let mut pair_out = stream.alloc_zeros::<f32>((n_pairs * PAIR_COLUMNS).max(1))?;
        let mut status = StatusWord::new(stream, true)?;
        let mut upload = None;
        {
            let mut guards: Vec<Guard<'_>> = Vec::new();
            let tp = tokens.ptrs(stream, &mut guards)?;
            let layout = seqs.raw(stream, &mut guards)?;
            let on_device = pairs.on_device(stream, &mut upload)?;
            let raw_pairs = on_device.raw;
            let rs = optional_ptr(stream, ref_seq, &mut guards)?;
            let sw = optional_ptr(stream, seq_weights, &mut guards)?;
            let (wp, _g0) = work.device_ptr_mut(stream)?;
            let (mp, _g1) = metrics.device_ptr_mut(stream)?;
            let (pp, _g2) = pair_out.device_ptr_mut(stream)?;
            let (gp, _g3) = grad_logp.device_ptr_mut(stream)?;
            let (sp, _g4) = status.ptr(stream)?;
            let ptrs = PreferenceLossPtrs {
                ref_seq: rs,
                seq_weights: sw,
                pair_out: pp,
                metrics: mp,
                grad_logp: gp,
                workspace: wp,
                status: sp,
            };
            // SAFETY: every pointer comes from a live cudarc buffer of checked length.
            unsafe {
                self.preference_loss_raw(stream.raw(), &tp, tokens.logp.len(), layout, raw_pairs, cfg, &ptrs)
            }?;
        }
        check_status(status.read(stream)?)?;
        PreferenceLossOutputs::read(stream, &metrics, &pair_out, n_pairs)
    }
}

impl PreferenceLossOutputs {
    /// Reads the outputs of a raw launch ([`Gpu::preference_loss_raw`]) back to the host: the
    /// `metrics` buffer ([`METRICS_LEN`] f32) and the first `n_pairs` rows of `pair_out`
    /// ([`PAIR_COLUMNS`] f32 each). Synchronizes `stream`.
    pub fn read(
        stream: &Stream,
        metrics: &DeviceBuffer<f32>,
        pair_out: &DeviceBuffer<f32>,
        n_pairs: usize,
    ) -> Result<Self> {
        let metrics: [f32; METRICS_LEN] = read_metrics(stream, "metrics", metrics)?;
        let rows = n_pairs.checked_mul(PAIR_COLUMNS).filter(|&r| r <= pair_out.len());
        ensure(rows.is_some(), "pair_out", || {
            format!("needs {n_pairs} x {PAIR_COLUMNS} f32, got {}", pair_out.len())
        })?;
        let p = stream.clone_dtoh(pair_out)?;
        let mut out = Self { loss: metrics[0], metrics, pairs: Vec::with_capacity(n_pairs) };
        out.pairs.extend(p.chunks_exact(PAIR_COLUMNS).take(n_pairs).map(|row| {
            let mut r = [0.0; PAIR_COLUMNS];
            r.copy_from_slice(row);
            r
        }));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind codes sent to the kernel equal the header's `PREFK_LOSS_*` defines.
    #[test]
    fn loss_kinds_match_the_header() {
        let header = include_str!("../../kernels/params.h");
        let define = |name: &str| -> u32 {
            let line = header.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap();
            line.split_whitespace().nth(2).unwrap().trim_end_matches('u').parse().unwrap()
        };
        let cfg = LossConfig::dpo(0.1);
        let cases = [
            (Loss::dpo(), "PREFK_LOSS_SIGMOID"),
            (Loss::Robust { beta: 0.1, label_smoothing: 0.0 }, "PREFK_LOSS_ROBUST"),
            (Loss::Hinge { beta: 0.1 }, "PREFK_LOSS_HINGE"),
            (Loss::Ipo { beta: 0.1 }, "PREFK_LOSS_IPO"),
            (Loss::ExoPair { beta: 0.1, epsilon: 1e-3 }, "PREFK_LOSS_EXO_PAIR"),
            (Loss::NcaPair { beta: 0.1 }, "PREFK_LOSS_NCA_PAIR"),
            (Loss::BcoPair { beta: 0.1 }, "PREFK_LOSS_BCO_PAIR"),
            (Loss::SppoHard { beta: 0.1 }, "PREFK_LOSS_SPPO_HARD"),
            (Loss::ApoZero { beta: 0.1 }, "PREFK_LOSS_APO_ZERO"),
            (Loss::ApoDown { beta: 0.1 }, "PREFK_LOSS_APO_DOWN"),
            (Loss::DiscoPop { beta: 0.1, tau: 0.05 }, "PREFK_LOSS_DISCOPOP"),
            (Loss::simpo(), "PREFK_LOSS_SIMPO"),
            (Loss::Cpo { beta: 0.1, label_smoothing: 0.0, hinge: false }, "PREFK_LOSS_CPO"),
            (Loss::Orpo { beta: 0.1 }, "PREFK_LOSS_ORPO"),
            (Loss::tgdpo(), "PREFK_LOSS_TGDPO"),
            (Loss::tabpo(), "PREFK_LOSS_TABPO"),
            (Loss::Nll, "PREFK_LOSS_NLL"),
            (Loss::SigmoidNorm { beta: 0.1 }, "PREFK_LOSS_SIGMOID_NORM"),
            (Loss::Aot { beta: 0.1, label_smoothing: 0.0 }, "PREFK_LOSS_AOT"),
            (Loss::AotUnpaired { beta: 0.1, label_smoothing: 0.0 }, "PREFK_LOSS_AOT_UNPAIRED"),
        ];
        for (loss, name) in cases {
            let kind = term_params(&loss, 1.0, &cfg).kind;
            assert_eq!(kind, define(name), "{name}");
            // The kernel's psi branch: kinds <= DISCOPOP and SIGMOID_NORM.
            let psi_branch =
                kind <= define("PREFK_LOSS_DISCOPOP") || kind == define("PREFK_LOSS_SIGMOID_NORM");
            assert_eq!(loss.is_dpo_family(), psi_branch, "{name}");
        }
        assert_eq!(PAIR_SORT_LEN as u32, define("PREFK_PAIR_SORT"));
        assert_eq!(PAIR_COEF_LEN as u32, define("PREFK_PAIR_COEF"));
        assert_eq!(define("PREFK_DIV_ALPHA"), 3);
        let tab = term_params(&Loss::tabpo(), 1.0, &cfg);
        assert_eq!((tab.p0, tab.p1, tab.agg), (0.66, 0.5, ReduceMode::WeightedMean as u32));
    }
}
