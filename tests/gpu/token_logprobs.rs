//! GPU parity of the token log-probs op against `token_logprobs::reference`.
//!
//! Tolerances (GPU f32 arithmetic vs the f64 reference on the same quantized inputs):
//! - logp, lse: |err| <= 2e-4 + 1e-5 |ref| (f32 online softmax over up to 262k terms);
//! - entropy: |err| <= 5e-4 + 1e-4 |ref|;
//! - grad_logits element: |err| <= rtol(dtype) |ref| + atol, rtol = 2e-4 (f32), 2e-3 (f16),
//!   1e-2 (bf16) (one rounding to the output dtype plus f32 error); atol = |g/T| * 1e-7, plus
//!   2^-25 for f16 (half its subnormal spacing: gradients below 6e-5 round in fixed steps), and
//!   at the target element |g/T| * 5e-5 (1 - p is formed from log p in f32, whose absolute error
//!   is a few ulp of lse).
use half::{bf16, f16};
use pref_kernels::token_logprobs::reference;
use pref_kernels::token_logprobs::{TokenLogprobsFwdPtrs, TokenLogprobsOutputs};
use pref_kernels::{DeviceBuffer, Stream};
use pref_kernels::{Error, Gpu, LogitElement, LogitsLayout, TargetIndex, TokenLogprobsConfig};
use rand::Rng;

use crate::common::{assert_close, logits as random_logits, rng};
use crate::Case;
use pref_kernels::step::GradLogits;
use pref_kernels::token_logprobs::reference as tl_ref;
use pref_kernels::token_logprobs::EntropyGrad;
use rand::rngs::StdRng;

const POISON: f32 = -7777.0;
const VOCABS: [usize; 6] = [1, 7, 32000, 128256, 151936, 262144];

pub(crate) trait Target: TargetIndex {
    fn from_i64(v: i64) -> Self;
}
impl Target for i32 {
    fn from_i64(v: i64) -> Self {
        v as i32
    }
}
impl Target for i64 {
    fn from_i64(v: i64) -> Self {
        v
    }
}

/// The gradient's relative tolerance (derivation: `common::tol`).
fn rtol_of<T: LogitElement>() -> f64 {
    crate::common::tol::grad_rtol::<T>()
}

fn subnormal_half_ulp<T: LogitElement>() -> f64 {
    match T::DTYPE {
        pref_kernels::DType::F16 => 2f64.powi(-25),
        _ => 0.0,
    }
}

pub(crate) struct Problem<T, I> {
    pub(crate) host: Vec<T>,
    pub(crate) offset: usize,
    pub(crate) layout: LogitsLayout,
    pub(crate) targets: Vec<I>,
    pub(crate) grad_logp: Vec<f32>,
}

/// Random problem: `n` rows, optional leading offset and row padding; ~15% ignored rows, and the
/// first row made "confident" (p(target) ~ 1) to exercise the expm1 target gradient.
pub(crate) fn problem<T: LogitElement, I: Target>(
    seed: u64,
    tag: u64,
    n: usize,
    vocab: usize,
    pad: usize,
    offset: usize,
) -> Problem<T, I> {
    let mut r = rng(seed, tag);
    let layout = LogitsLayout { n_rows: n, vocab, row_stride: vocab + pad };
    let mut x = random_logits(&mut r, offset + layout.span().unwrap());
    let targets: Vec<i64> = (0..n)
        .map(|_| if r.random_ratio(15, 100) { -100 } else { r.random_range(0..vocab as i64) })
        .collect();
    if let Some(&t0) = targets.first() {
        if t0 >= 0 {
            x[offset + t0 as usize] += 25.0;
        }
    }
    let grad_logp = (0..n).map(|_| r.random_range(-2.0f32..2.0)).collect();
    Problem {
        host: x.into_iter().map(T::from_f32).collect(),
        offset,
        layout,
        targets: targets.into_iter().map(I::from_i64).collect(),
        grad_logp,
    }
}

impl<T: Copy, I: Copy> Problem<T, I> {
    /// Same layout, targets and gradients, no data.
    fn clone_shape(&self) -> Problem<T, I> {
        Problem {
            host: Vec::new(),
            offset: self.offset,
            layout: self.layout,
            targets: self.targets.clone(),
            grad_logp: self.grad_logp.clone(),
        }
    }
}

pub(crate) struct Forward {
    pub(crate) logp: Vec<f32>,
    pub(crate) lse: Vec<f32>,
    pub(crate) entropy: Option<Vec<f32>>,
    /// `[n, SOFTMAX_STATS]`: row max, log2 of the sum.
    pub(crate) stats: Vec<f32>,
    /// log Σ p², written with the entropy.
    pub(crate) log_sum_sq: Option<Vec<f32>>,
}

fn run_forward<T: LogitElement, I: Target>(
    gpu: &Gpu,
    s: &Stream,
    logits: &DeviceBuffer<T>,
    p: &Problem<T, I>,
    cfg: &TokenLogprobsConfig,
) -> pref_kernels::Result<Forward> {
    let n = p.layout.n_rows;
    let targets = s.clone_htod(&p.targets).unwrap();
    let mut logp = s.clone_htod(&vec![POISON; n]).unwrap();
    let mut lse = s.clone_htod(&vec![POISON; n]).unwrap();
    let mut entropy = s.clone_htod(&vec![POISON; n]).unwrap();
    let mut stats = s.clone_htod(&vec![POISON; 2 * n]).unwrap();
    let mut log_sum_sq = s.clone_htod(&vec![POISON; n]).unwrap();
    let view = logits.slice(p.offset..);
    gpu.token_logprobs_forward(
        s,
        &view,
        p.layout,
        &targets,
        TokenLogprobsOutputs {
            logp: logp.as_view_mut(),
            lse: lse.as_view_mut(),
            entropy: cfg.compute_entropy.then(|| entropy.as_view_mut()),
            stats: Some(stats.as_view_mut()),
            log_sum_sq: cfg.compute_entropy.then(|| log_sum_sq.as_view_mut()),
            mean_logits: None,
            is_top1: None,
        },
        cfg,
    )?;
    Ok(Forward {
        logp: s.clone_dtoh(&logp).unwrap(),
        lse: s.clone_dtoh(&lse).unwrap(),
        entropy: cfg.compute_entropy.then(|| s.clone_dtoh(&entropy).unwrap()),
        stats: s.clone_dtoh(&stats).unwrap(),
        log_sum_sq: cfg.compute_entropy.then(|| s.clone_dtoh(&log_sum_sq).unwrap()),
    })
}

pub(crate) fn check_forward<T: LogitElement, I: Target>(
    p: &Problem<T, I>,
    got: &Forward,
    cfg: &TokenLogprobsConfig,
) -> reference::TokenLogprobsRef {
    let want = reference::forward(&p.host[p.offset..], p.layout, &p.targets, cfg).unwrap();
    // Absolute (derivation: common::tol::row_atol), plus the f32 rounding of the value itself
    // (lse and logp reach |m / T| at huge logits).
    let atol = crate::common::tol::row_atol(p.layout.vocab);
    let u = 2.0 * crate::common::tol::U;
    for r in 0..p.layout.n_rows {
        close_or_overflow(&format!("logp[{r}]"), got.logp[r], want.logp[r], atol, u);
        close_or_overflow(&format!("lse[{r}]"), got.lse[r], want.lse[r], atol, u);
        if let Some(e) = &got.entropy {
            assert_close(&format!("entropy[{r}]"), e[r] as f64, want.entropy[r], atol, u);
        }
        if let Some(q) = &got.log_sum_sq {
            // ln q − 2 ln s from two f32 sums of the same terms (2^d and its square): the error
            // of ln s, doubled.
            close_or_overflow(&format!("log_sum_sq[{r}]"), q[r], want.log_sum_sq[r], 2.0 * atol, u);
        }
        // The statistics: the row max exactly, and log2 of the sum relative to it.
        let (m, log2s) = (got.stats[2 * r], got.stats[2 * r + 1]);
        if p.targets[r].to_i64() == cfg.ignore_index {
            assert_eq!((m, log2s), (0.0, 0.0), "stats of ignored row {r}");
            continue;
        }
        let row: Vec<f64> = p.host[p.offset + r * p.layout.row_stride..][..p.layout.vocab]
            .iter()
            .map(|x| x.to_f64())
            .collect();
        if want.lse[r].is_nan() {
            assert!(log2s.is_nan(), "stats of row {r} (NaN or +inf in the row): log2 s {log2s}");
            continue;
        }
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(m as f64, max, "stats max of row {r}");
        let inv_t = 1.0 / cfg.temperature as f64;
        let sum: f64 = row.iter().map(|&x| ((x - max) * inv_t).exp()).sum();
        assert_close(
            &format!("stats log2 s[{r}]"),
            log2s as f64,
            sum.log2(),
            atol / std::f64::consts::LN_2,
            u,
        );
    }
    want
}

/// `got` within `atol + rtol |want|` of the f64 value, or, where that value lies beyond f32's range
/// (a log-prob or lse of logits near FLT_MAX divided by T < 1), the infinity of its sign: the
/// correctly rounded f32 result.
fn close_or_overflow(what: &str, got: f32, want: f64, atol: f64, rtol: f64) {
    if want.is_finite() && want.abs() > f32::MAX as f64 {
        assert!(got.is_infinite() && got.signum() as f64 == want.signum(), "{what}: got {got}, want {want}");
    } else {
        assert_close(what, got as f64, want, atol, rtol);
    }
}

/// Compares a strided GPU gradient with the dense reference; padding columns must hold `pad_value`.
fn check_grad<T: LogitElement, I: Target>(
    p: &Problem<T, I>,
    got: &[T],
    stride: usize,
    pad_value: impl Fn(usize) -> f64,
    cfg: &TokenLogprobsConfig,
) {
    let want = reference::backward(&p.host[p.offset..], p.layout, &p.targets, &p.grad_logp, cfg).unwrap();
    let v = p.layout.vocab;
    let rtol = rtol_of::<T>();
    for r in 0..p.layout.n_rows {
        let coef = (p.grad_logp[r] / cfg.temperature).abs() as f64;
        let t = p.targets[r].to_i64();
        for c in 0..stride.min(got.len().saturating_sub(r * stride)) {
            let g = got[r * stride + c].to_f64();
            if c >= v {
                assert_eq!(g, pad_value(r * stride + c), "padding column {c} of row {r} was written");
                continue;
            }
            // One rounding to the output dtype: below f16's normal range that is half the fixed
            // subnormal spacing 2^-24, whatever |g/T| is.
            let atol = if c as i64 == t { coef * 5e-5 } else { coef * 1e-7 } + subnormal_half_ulp::<T>();
            assert_close(&format!("grad[{r}, {c}] (target {t})"), g, want[r * v + c], atol, rtol);
        }
    }
}

/// Forward, out-of-place backward and in-place backward against the reference.
fn parity<T: LogitElement, I: Target>(
    gpu: &Gpu,
    p: &Problem<T, I>,
    cfg: &TokenLogprobsConfig,
    grad_offset: usize,
) {
    let s = gpu.default_stream();
    let logits = s.clone_htod(&p.host).unwrap();
    let fwd = run_forward(gpu, &s, &logits, p, cfg).unwrap();
    check_forward(p, &fwd, cfg);

    let n = p.layout.n_rows;
    let targets = s.clone_htod(&p.targets).unwrap();
    let stats = s.clone_htod(&fwd.stats).unwrap();
    let grad_logp = s.clone_htod(&p.grad_logp).unwrap();
    // Out of place, into a buffer with its own stride (and possibly a different misalignment).
    let gstride = p.layout.vocab + 1;
    let poison = T::from_f32(1234.0);
    let mut grad = s.clone_htod(&vec![poison; grad_offset + n * gstride]).unwrap();
    let mut gview = grad.slice_mut(grad_offset..);
    gpu.token_logprobs_backward(
        &s,
        &logits.slice(p.offset..),
        p.layout,
        &targets,
        &stats,
        &grad_logp,
        &mut gview,
        gstride,
        cfg,
    )
    .unwrap();
    let got = s.clone_dtoh(&grad).unwrap();
    check_grad(p, &got[grad_offset..], gstride, |_| poison.to_f64(), cfg);

    // In place over the logits: columns beyond vocab (row padding) must be left untouched.
    let mut inplace = s.clone_htod(&p.host).unwrap();
    let mut iview = inplace.slice_mut(p.offset..);
    gpu.token_logprobs_backward_inplace(&s, &mut iview, p.layout, &targets, &stats, &grad_logp, cfg).unwrap();
    let got = s.clone_dtoh(&inplace).unwrap();
    check_grad(p, &got[p.offset..], p.layout.row_stride, |i| p.host[p.offset + i].to_f64(), cfg);
}

fn parity_case<T: LogitElement, I: Target>(vocab: usize) -> Case {
    let name = format!("parity_{}_{}_v{vocab}", T::DTYPE.name(), I::INDEX_TYPE.name());
    Case {
        name: Box::leak(name.into_boxed_str()),
        run: Box::new(move |gpu, seed| {
            let mut r = rng(seed, vocab as u64);
            let max_n = if vocab >= 32000 { 40 } else { 3000 };
            let n = r.random_range(1..=max_n);
            // Entropy and temperature != 1 on the i64 cases, plain defaults on the i32 ones.
            let cfg = if I::INDEX_TYPE == pref_kernels::IndexType::I64 {
                TokenLogprobsConfig { temperature: 0.7, compute_entropy: true, ..Default::default() }
            } else {
                TokenLogprobsConfig::default()
            };
            println!("  N = {n}, V = {vocab}, {cfg:?}");
            parity(gpu, &problem::<T, I>(seed, vocab as u64 + 1, n, vocab, 0, 0), &cfg, 0);
        }),
    }
}

fn strided_case<T: LogitElement>() -> Case {
    let name = format!("strided_misaligned_views_{}", T::DTYPE.name());
    Case {
        name: Box::leak(name.into_boxed_str()),
        run: Box::new(|gpu, seed| {
            let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
            for (i, &vocab) in [7usize, 1000, 1031, 32001].iter().enumerate() {
                // Offset 3 elements and row padding 5: rows start at every misalignment; the
                // out-of-place gradient (offset 1) has a different misalignment (scalar path).
                let p = problem::<T, i64>(seed, 100 + i as u64, 37, vocab, 5, 3);
                parity(gpu, &p, &cfg, 1);
                parity(gpu, &p, &cfg, 3);
            }
        }),
    }
}

fn bad_targets(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    let mut p = problem::<bf16, i64>(seed, 7, 64, 5000, 0, 0);
    p.targets[3] = 5000;
    p.targets[9] = -5;
    p.targets[10] = -100;
    let logits = s.clone_htod(&p.host).unwrap();
    let cfg = TokenLogprobsConfig::default();
    let err = run_forward(gpu, &s, &logits, &p, &cfg).err().expect("bad targets must be reported");
    assert!(matches!(err, Error::DeviceCheck(_)), "{err}");
    // Without the check: no error, NaN on the bad rows, the other rows exact.
    let unchecked = TokenLogprobsConfig { check_targets: false, ..cfg };
    let got = run_forward(gpu, &s, &logits, &p, &unchecked).unwrap();
    assert!(got.logp[3].is_nan() && got.logp[9].is_nan() && got.lse[3].is_nan());
    assert_eq!(got.logp[10], 0.0);
    let mut good = p.targets.clone();
    good[3] = -100;
    good[9] = -100;
    let want = reference::forward(&p.host, p.layout, &good, &cfg).unwrap();
    for r in (0..64).filter(|r| ![3, 9].contains(r)) {
        assert_close("logp", got.logp[r] as f64, want.logp[r], 2e-4, 1e-5);
    }
    // Backward: error, and NaN rows.
    let targets = s.clone_htod(&p.targets).unwrap();
    let stats = s.clone_htod(&got.stats).unwrap();
    let gl = s.clone_htod(&p.grad_logp).unwrap();
    let mut grad = s.alloc_zeros::<bf16>(64 * 5000).unwrap();
    let e = gpu.token_logprobs_backward(&s, &logits, p.layout, &targets, &stats, &gl, &mut grad, 5000, &cfg);
    assert!(matches!(e, Err(Error::DeviceCheck(_))));
    let g = s.clone_dtoh(&grad).unwrap();
    assert!(g[3 * 5000..4 * 5000].iter().all(|v| v.is_nan()));
    assert!(g[10 * 5000..11 * 5000].iter().all(|v| v.to_f32() == 0.0));
}

fn determinism_and_batch_invariance(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    for vocab in [100usize, 128256] {
        let p = problem::<bf16, i64>(seed, 11, 48, vocab, 0, 0);
        let logits = s.clone_htod(&p.host).unwrap();
        let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
        let a = run_forward(gpu, &s, &logits, &p, &cfg).unwrap();
        let b = run_forward(gpu, &s, &logits, &p, &cfg).unwrap();
        assert_eq!(bits(&a.logp), bits(&b.logp), "run-to-run logp");
        assert_eq!(bits(a.entropy.as_ref().unwrap()), bits(b.entropy.as_ref().unwrap()));
        // Entropy on or off does not change logp.
        let c = run_forward(gpu, &s, &logits, &p, &TokenLogprobsConfig::default()).unwrap();
        assert_eq!(bits(&a.logp), bits(&c.logp), "entropy flag changed logp");
        // A row computed alone, or in a sub-batch, equals the same row in the full batch.
        for (start, len) in [(5usize, 1usize), (17, 9), (40, 8)] {
            let sub = Problem {
                host: p.host[start * vocab..(start + len) * vocab].to_vec(),
                offset: 0,
                layout: LogitsLayout::contiguous(len, vocab),
                targets: p.targets[start..start + len].to_vec(),
                grad_logp: p.grad_logp[start..start + len].to_vec(),
            };
            let sub_logits = s.clone_htod(&sub.host).unwrap();
            let d = run_forward(gpu, &s, &sub_logits, &sub, &cfg).unwrap();
            assert_eq!(
                bits(&d.logp),
                bits(&a.logp[start..start + len]),
                "batch-dependent logp at rows {start}.."
            );
        }
    }
}

/// A row's logp, lse and entropy are bitwise the same whatever the row's address (every
/// misalignment mod 16 bytes), the batch around it, and its position in the batch.
fn alignment_and_batch_invariance<T: LogitElement>(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let vec = 16 / std::mem::size_of::<T>();
    for (i, &vocab) in [100usize, 1031, 4099].iter().enumerate() {
        // Odd row stride: consecutive rows start at every misalignment.
        let p = problem::<T, i64>(seed, 500 + i as u64, 24, vocab, 1, 0);
        let logits = s.clone_htod(&p.host).unwrap();
        let full = run_forward(gpu, &s, &logits, &p, &cfg).unwrap();
        for shift in 1..vec {
            // The same batch shifted by `shift` elements in memory.
            let mut host = vec![T::from_f32(0.0); shift];
            host.extend_from_slice(&p.host);
            let shifted = s.clone_htod(&host).unwrap();
            let q = Problem { host, offset: shift, ..p.clone_shape() };
            let got = run_forward(gpu, &s, &shifted, &q, &cfg).unwrap();
            assert_eq!(
                bits(&got.logp),
                bits(&full.logp),
                "V={vocab}: logp changed with a {shift}-element shift"
            );
            assert_eq!(
                bits(&got.lse),
                bits(&full.lse),
                "V={vocab}: lse changed with a {shift}-element shift"
            );
            assert_eq!(
                bits(got.entropy.as_ref().unwrap()),
                bits(full.entropy.as_ref().unwrap()),
                "V={vocab}: entropy changed with a {shift}-element shift"
            );
        }
        // Each row alone, contiguous and 256-byte aligned.
        for r in [0usize, 1, 5, 23] {
            let row = p.host[r * (vocab + 1)..r * (vocab + 1) + vocab].to_vec();
            let one = Problem {
                host: row,
                offset: 0,
                layout: LogitsLayout::contiguous(1, vocab),
                targets: vec![p.targets[r]],
                grad_logp: vec![p.grad_logp[r]],
            };
            let buf = s.clone_htod(&one.host).unwrap();
            let got = run_forward(gpu, &s, &buf, &one, &cfg).unwrap();
            assert_eq!(got.logp[0].to_bits(), full.logp[r].to_bits(), "V={vocab}: row {r} alone, logp");
            assert_eq!(
                got.entropy.as_ref().unwrap()[0].to_bits(),
                full.entropy.as_ref().unwrap()[r].to_bits(),
                "V={vocab}: row {r} alone, entropy"
            );
        }
    }
}

fn nan_and_inf_propagate(gpu: &Gpu, _seed: u64) {
    let s = gpu.default_stream();
    let vocab = 3000;
    let mut p = problem::<f32, i32>(1, 12, 4, vocab, 0, 0);
    p.targets = vec![0, 0, 0, 0];
    p.host[vocab + 1234] = f32::NAN;
    p.host[2 * vocab + 2999] = f32::INFINITY;
    p.host[3 * vocab + 17] = f32::NEG_INFINITY; // a masked-out vocabulary entry: finite result
    let logits = s.clone_htod(&p.host).unwrap();
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let got = run_forward(gpu, &s, &logits, &p, &cfg).unwrap();
    assert!(got.logp[0].is_finite());
    assert!(got.logp[1].is_nan() && got.lse[1].is_nan(), "NaN logit must give NaN");
    assert!(got.logp[2].is_nan() && got.lse[2].is_nan(), "+inf logit must give NaN");
    assert!(got.logp[3].is_finite() && got.entropy.as_ref().unwrap()[3].is_finite());
    check_forward(&p, &got, &cfg);
}

/// Finite logits of ±1.2e38: in the kernels' base 2 (z = x log2 e) two row maxima differ by more
/// than FLT_MAX, so rescaling an old state gives a weight of 0 times an offset of -inf. The
/// entropy must stay the reference's finite value, not NaN (a 0 · -inf), in both the per-thread
/// chunk update (a thread's negative chunks before its positive one) and the cross-thread combine.
fn huge_finite_logits(gpu: &Gpu, _seed: u64) {
    let s = gpu.default_stream();
    let (vocab, big) = (3000usize, 1.2e38f32);
    let mut p = problem::<f32, i32>(2, 13, 3, vocab, 0, 0);
    for v in 0..vocab {
        p.host[v] = if v >= vocab - 40 { big } else { -big }; // the maxima come last
        p.host[vocab + v] = if v % 2 == 0 { -big } else { big }; // alternating
        p.host[2 * vocab + v] = if v == 1500 { big } else { -big }; // one max mid-row
    }
    p.targets = vec![vocab as i32 - 1, 1, 1500]; // at a maximum: logp = -ln(count), finite
    let logits = s.clone_htod(&p.host).unwrap();
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let got = run_forward(gpu, &s, &logits, &p, &cfg).unwrap();
    for (r, e) in got.entropy.as_ref().unwrap().iter().enumerate() {
        assert!(e.is_finite(), "row {r}: entropy {e}");
    }
    check_forward(&p, &got, &cfg);
}

/// One row of `extreme_rows`: (column, logit) entries over a fill value, and the target.
type ExtremeRow = (Vec<(usize, f32)>, f32, i64);

/// Finite logits at every magnitude, f32 and bf16, both row-group sizes, T = 1, 0.7 and 1.5: the
/// forward (logp, lse, entropy, statistics) and the backward (out of place and in place) equal f64.
/// Rows hold logits at and above FLT_MAX / log2(e) · T (x · log2(e) / T overflows f32: the whole
/// row was NaN), a dominant target at 1e6 .. 1e30 (exact gradient 0 there: it was -0.015 at 1e6,
/// 0.72 at 1e8 and NaN at 1e12, from a rounded lse), a tie at 1e12 (±0.5, was -inf), logits a few
/// ulp apart at 1e8 (x · scale rounded their difference away), and a target far below the max.
fn extreme_rows<T: LogitElement>(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    for vocab in [8usize, 3000] {
        for temperature in [1.0f32, 0.7, 1.5] {
            let mut r = rng(seed, 1700 + vocab as u64);
            let rows: Vec<ExtremeRow> = vec![
                (vec![(0, 1e6)], 0.0, 0),
                (vec![(0, 1e8)], 0.0, 0),
                (vec![(0, 1e12)], 0.0, 0),
                (vec![(0, 1e30)], 0.0, 0),
                (vec![(0, 1e12), (1, 1e12)], 0.0, 1),
                (vec![(0, 3e38)], -3e38, 0),
                (vec![(0, 3e38), (1, 1.0), (2, -2.0)], 0.0, 1),
                (vec![(0, 2.4e38), (5, 2.4e38)], 1.0, 5),
                (vec![(0, 1e8), (1, 1e8 + 8.0), (2, 1e8 + 16.0)], 0.0, 1),
                (vec![(0, -1e30), (1, 1e30)], 0.0, 0),
                (vec![(vocab - 1, -3e38), (3, 3e38)], -1e30, 3),
            ];
            let n = rows.len() + 1;
            let mut host = Vec::with_capacity(n * vocab);
            let mut targets = Vec::with_capacity(n);
            for (entries, fill, t) in &rows {
                let mut row = vec![*fill; vocab];
                for &(c, x) in entries {
                    row[c] = x;
                }
                host.extend(row.into_iter().map(T::from_f32));
                targets.push(*t);
            }
            // A plain row beside them: its result must not change with its neighbours'.
            host.extend(random_logits(&mut r, vocab).into_iter().map(T::from_f32));
            targets.push(r.random_range(0..vocab as i64));
            let p = Problem {
                host,
                offset: 0,
                layout: LogitsLayout::contiguous(n, vocab),
                targets,
                grad_logp: (0..n).map(|_| r.random_range(0.5f32..2.0)).collect(),
            };
            let cfg = TokenLogprobsConfig { temperature, compute_entropy: true, ..Default::default() };
            let logits = s.clone_htod(&p.host).unwrap();
            let fwd = run_forward(gpu, &s, &logits, &p, &cfg).unwrap();
            for (i, e) in fwd.entropy.as_ref().unwrap().iter().enumerate() {
                assert!(e.is_finite(), "V {vocab} T {temperature} row {i}: entropy {e}");
            }
            check_forward(&p, &fwd, &cfg);
            let targets = s.clone_htod(&p.targets).unwrap();
            let stats = s.clone_htod(&fwd.stats).unwrap();
            let grad_logp = s.clone_htod(&p.grad_logp).unwrap();
            let mut grad = s.clone_htod(&vec![T::from_f32(f32::NAN); n * vocab]).unwrap();
            gpu.token_logprobs_backward(
                &s, &logits, p.layout, &targets, &stats, &grad_logp, &mut grad, vocab, &cfg,
            )
            .unwrap();
            let got = s.clone_dtoh(&grad).unwrap();
            assert!(
                got.iter().all(|g| g.to_f64().is_finite()),
                "V {vocab} T {temperature}: a non-finite gradient"
            );
            check_grad(&p, &got, vocab, |_| f64::NAN, &cfg);
            let mut inplace = s.clone_htod(&p.host).unwrap();
            gpu.token_logprobs_backward_inplace(
                &s,
                &mut inplace,
                p.layout,
                &targets,
                &stats,
                &grad_logp,
                &cfg,
            )
            .unwrap();
            check_grad(&p, &s.clone_dtoh(&inplace).unwrap(), vocab, |_| f64::NAN, &cfg);
        }
    }
}

fn raw_api_rejects_bad_arguments(gpu: &Gpu, _seed: u64) {
    let cfg = TokenLogprobsConfig::default();
    let layout = LogitsLayout::contiguous(4, 10);
    let good = TokenLogprobsFwdPtrs {
        logits: 0x1000,
        targets: 0x2000,
        logp: 0x3000,
        lse: 0x4000,
        entropy: 0,
        status: 0,
        stats: 0x6000,
        log_sum_sq: 0,
        mean_logits: 0,
        is_top1: 0,
    };
    let call = |ptrs: TokenLogprobsFwdPtrs, l: LogitsLayout, c: TokenLogprobsConfig| {
        // SAFETY: every call below must be rejected by validation before any launch.
        unsafe {
            gpu.token_logprobs_forward_raw(
                0,
                pref_kernels::DType::BF16,
                pref_kernels::IndexType::I64,
                l,
                &ptrs,
                &c,
            )
        }
        .expect_err("must be rejected")
        .to_string()
    };
    assert!(call(TokenLogprobsFwdPtrs { logits: 0, ..good }, layout, cfg).contains("logits"));
    assert!(call(TokenLogprobsFwdPtrs { logits: 0x1001, ..good }, layout, cfg).contains("aligned"));
    assert!(call(TokenLogprobsFwdPtrs { targets: 0x2004, ..good }, layout, cfg).contains("targets"));
    assert!(call(TokenLogprobsFwdPtrs { entropy: 0x5000, ..good }, layout, cfg).contains("entropy"));
    assert!(call(TokenLogprobsFwdPtrs { stats: 0x6001, ..good }, layout, cfg).contains("stats"));
    assert!(call(good, LogitsLayout { row_stride: 9, ..layout }, cfg).contains("row_stride"));
    assert!(call(good, layout, TokenLogprobsConfig { temperature: 0.0, ..cfg }).contains("temperature"));
}

/// Rows past 2^31 elements: 64-bit offsets (bf16 [8200, 262144] = 4.3 GB).
fn beyond_2_pow_31_elements(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    let (n, vocab) = (8200usize, 262144usize);
    let mut state = seed | 1;
    let host: Vec<bf16> = (0..n * vocab)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bf16::from_f32(((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 12.0)
        })
        .collect();
    let targets: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % vocab as i64).collect();
    let logits = s.clone_htod(&host).unwrap();
    let p = Problem {
        host: Vec::new(),
        offset: 0,
        layout: LogitsLayout::contiguous(n, vocab),
        targets,
        grad_logp: vec![1.0; n],
    };
    let got = run_forward(gpu, &s, &logits, &p, &TokenLogprobsConfig::default()).unwrap();
    for r in [0usize, 8191, 8192, n - 1] {
        let row = &host[r * vocab..(r + 1) * vocab];
        let want = reference::forward(
            row,
            LogitsLayout::contiguous(1, vocab),
            &p.targets[r..r + 1],
            &TokenLogprobsConfig::default(),
        )
        .unwrap();
        assert_close(&format!("logp[{r}]"), got.logp[r] as f64, want.logp[0], 2e-4, 1e-5);
    }
}

/// The raw API on a caller-owned (non-default) stream, and the C ABI on the same buffers: both
/// give the safe API's numbers bitwise.
fn raw_api_and_c_abi_on_a_borrowed_stream(gpu: &Gpu, seed: u64) {
    use pref_kernels::runtime::{DevicePtr, DevicePtrMut};
    let p = problem::<bf16, i64>(seed, 13, 300, 32000, 0, 0);
    let s = gpu.default_stream();
    let logits = s.clone_htod(&p.host).unwrap();
    let want = run_forward(gpu, &s, &logits, &p, &TokenLogprobsConfig::default()).unwrap();
    let own = gpu.new_stream().unwrap();
    let targets = own.clone_htod(&p.targets).unwrap();
    let mut logp = own.alloc_zeros::<f32>(300).unwrap();
    let mut lse = own.alloc_zeros::<f32>(300).unwrap();
    {
        let (lp, _a) = logits.device_ptr(&own).unwrap();
        let (tp, _b) = targets.device_ptr(&own).unwrap();
        let (op, _c) = logp.device_ptr_mut(&own).unwrap();
        let (sp, _d) = lse.device_ptr_mut(&own).unwrap();
        let ptrs = TokenLogprobsFwdPtrs {
            logits: lp,
            targets: tp,
            logp: op,
            lse: sp,
            entropy: 0,
            status: 0,
            stats: 0,
            log_sum_sq: 0,
            mean_logits: 0,
            is_top1: 0,
        };
        // SAFETY: live buffers of the right sizes on this device; `own` is a live stream.
        unsafe {
            gpu.token_logprobs_forward_raw(
                own.raw(),
                pref_kernels::DType::BF16,
                pref_kernels::IndexType::I64,
                p.layout,
                &ptrs,
                &TokenLogprobsConfig::default(),
            )
        }
        .unwrap();
    }
    assert_eq!(bits(&own.clone_dtoh(&logp).unwrap()), bits(&want.logp), "raw API on a borrowed stream");
    let mut logp2 = own.alloc_zeros::<f32>(300).unwrap();
    {
        let (lp, _a) = logits.device_ptr(&own).unwrap();
        let (tp, _b) = targets.device_ptr(&own).unwrap();
        let (op, _c) = logp2.device_ptr_mut(&own).unwrap();
        let (sp, _d) = lse.device_ptr_mut(&own).unwrap();
        let ordinal =
            gpu.cuda_context().map_or(pref_kernels::ffi::PREFK_DEVICE_EMULATOR, |c| c.ordinal() as i32);
        // SAFETY: as above, through the C ABI.
        let rc = unsafe {
            pref_kernels::ffi::prefk_token_logprobs_forward(
                &pref_kernels::ffi::PrefkTokenLogprobsForwardArgs {
                    device: ordinal,
                    stream: own.raw(),
                    dtype_code: 2,
                    index_code: 1,
                    logits: lp,
                    targets: tp,
                    logp: op,
                    lse: sp,
                    stats: 0,
                    entropy: 0,
                    log_sum_sq: 0,
                    status: 0,
                    n_rows: 300,
                    vocab: 32000,
                    row_stride: 32000,
                    ignore_index: -100,
                    temperature: 1.0,
                    ..pref_kernels::ffi::PrefkTokenLogprobsForwardArgs::new()
                },
            )
        };
        assert_eq!(rc, 0);
    }
    assert_eq!(bits(&own.clone_dtoh(&logp2).unwrap()), bits(&want.logp), "C ABI");
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The entropy's gradient through the token log-probs backward (an entropy bonus), f32 and bf16.
fn entropy_backward_case<T: LogitElement + pref_kernels::runtime::mem::Element>(
    gpu: &Gpu,
    r: &mut StdRng,
    vocab: usize,
    atol_rel: f64,
) {
    let s = gpu.default_stream();
    let n = 37;
    let layout = LogitsLayout::contiguous(n, vocab);
    let host: Vec<T> = random_logits(r, n * vocab).into_iter().map(T::from_f32).collect();
    let targets: Vec<i32> =
        (0..n).map(|i| if i % 9 == 4 { -100 } else { r.random_range(0..vocab as i32) }).collect();
    let cfg = TokenLogprobsConfig { temperature: 0.7, ..Default::default() };
    let fwd = tl_ref::forward(&host, layout, &targets, &cfg).unwrap();
    let entropy: Vec<f32> = fwd.entropy.iter().map(|&e| e as f32).collect();
    let gl: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let ge: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let lse = crate::common::softmax_stats(&host, layout, &targets, &cfg);
    let want = tl_ref::backward_with_entropy(&host, layout, &targets, &gl, &ge, &cfg).unwrap();
    for in_place in [true, false] {
        let mut logits = s.clone_htod(&host).unwrap();
        let (dt, dl, dg, de, dge) = (
            s.clone_htod(&targets).unwrap(),
            s.clone_htod(&lse).unwrap(),
            s.clone_htod(&gl).unwrap(),
            s.clone_htod(&entropy).unwrap(),
            s.clone_htod(&ge).unwrap(),
        );
        let mut sep = s.clone_htod(&vec![T::from_f32(f32::NAN); n * vocab]).unwrap();
        let grad = if in_place {
            GradLogits::InPlace
        } else {
            GradLogits::Separate { grad: sep.as_view_mut(), row_stride: vocab }
        };
        let (ev, gev) = (de.as_view(), dge.as_view());
        gpu.token_logprobs_backward_with_entropy(
            &s,
            &mut logits.as_view_mut(),
            layout,
            &dt,
            &dl,
            &dg,
            EntropyGrad { entropy: &ev, grad_entropy: &gev },
            grad,
            &cfg,
        )
        .unwrap();
        let got = if in_place { s.clone_dtoh(&logits).unwrap() } else { s.clone_dtoh(&sep).unwrap() };
        for row in 0..n {
            // An entry is (g (1[v = t] − p) − gH p (ln p + H)) / T: its f32 error is relative
            // (common::tol) except where ln p + H cancels, where p times the ~3e-6 absolute error
            // of ln p + H remains: `atol_rel` times the row's gradient scale. Then one rounding.
            let scale = (gl[row].abs() + ge[row].abs() * (1.0 + entropy[row].abs())) as f64 / 0.7;
            for v in 0..vocab {
                let (g, w) = (got[row * vocab + v].to_f64(), want[row * vocab + v]);
                assert_close(
                    &format!("V {vocab} {}: dlogits[{row}, {v}]", T::DTYPE.name()),
                    g,
                    w,
                    scale * atol_rel + 1e-12,
                    crate::common::tol::grad_rtol::<T>(),
                );
            }
        }
    }
}

fn entropy_backward_parity(gpu: &Gpu, seed: u64) {
    let mut r = rng(seed, 904);
    for vocab in [37, 5003] {
        entropy_backward_case::<f32>(gpu, &mut r, vocab, 1e-5);
        entropy_backward_case::<bf16>(gpu, &mut r, vocab, 1e-5);
    }
}

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.push(Case { name: "entropy_backward_parity_f32_bf16", run: Box::new(entropy_backward_parity) });
    for vocab in VOCABS {
        v.push(parity_case::<f32, i32>(vocab));
        v.push(parity_case::<f32, i64>(vocab));
        v.push(parity_case::<f16, i32>(vocab));
        v.push(parity_case::<f16, i64>(vocab));
        v.push(parity_case::<bf16, i32>(vocab));
        v.push(parity_case::<bf16, i64>(vocab));
    }
    // The "V up to at least 1,048,576".
    v.push(parity_case::<bf16, i64>(1 << 20));
    v.push(strided_case::<f32>());
    v.push(strided_case::<f16>());
    v.push(strided_case::<bf16>());
    v.push(Case { name: "bad_targets_reported", run: Box::new(bad_targets) });
    v.push(Case {
        name: "determinism_and_batch_invariance",
        run: Box::new(determinism_and_batch_invariance),
    });
    v.push(Case { name: "nan_and_inf_propagate", run: Box::new(nan_and_inf_propagate) });
    v.push(Case { name: "huge_finite_logits", run: Box::new(huge_finite_logits) });
    v.push(Case { name: "extreme_rows_f32", run: Box::new(extreme_rows::<f32>) });
    v.push(Case { name: "extreme_rows_bf16", run: Box::new(extreme_rows::<bf16>) });
    v.push(Case {
        name: "alignment_and_batch_invariance_f32",
        run: Box::new(alignment_and_batch_invariance::<f32>),
    });
    v.push(Case {
        name: "alignment_and_batch_invariance_f16",
        run: Box::new(alignment_and_batch_invariance::<f16>),
    });
    v.push(Case {
        name: "alignment_and_batch_invariance_bf16",
        run: Box::new(alignment_and_batch_invariance::<bf16>),
    });
    v.push(Case { name: "raw_api_rejects_bad_arguments", run: Box::new(raw_api_rejects_bad_arguments) });
    v.push(Case { name: "beyond_2_pow_31_elements", run: Box::new(beyond_2_pow_31_elements) });
    v.push(Case {
        name: "raw_api_and_c_abi_on_a_borrowed_stream",
        run: Box::new(raw_api_and_c_abi_on_a_borrowed_stream),
    });
    v
}
