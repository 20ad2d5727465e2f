//! GPU parity of shared-prefix group attention against the f64 reference.
//!
//! Tolerances, derived per element (`shared_prefix_attention::reference::rounding_bounds`): the kernels'
//! products are exact and their arithmetic f32, but P and dS enter the tensor cores in 16 bits and
//! O (which the backward's D reads) and every output round once, each by the dtype's unit roundoff
//! r (2^-8 bf16, 2^-11 f16); the bounds propagate those roundings through the reference's own P,
//! dS, |V|, |K|, |Q| and |dO|. LSE (f32): S from exact products summed in f32 ((d/16 + 4) u
//! Σ|q k| scale, ~2e-6 here), exp2/log2 within 2/1 ulp on a GPU, the row sum of at most T terms:
//! |err| <= 2e-5 (1 + |LSE|).
use half::{bf16, f16};
use pref_kernels::shared_prefix_attention::reference::{backward, forward, rounding_bounds};
use pref_kernels::shared_prefix_attention::{
    AttnElement, AttnSaved, AttnShape, AttnVersion, PrefixGroup, SharedPrefixLayout,
};
use pref_kernels::Gpu;
use rand::Rng;

use crate::common::rng;
use crate::Case;

type Groups = Vec<(usize, Vec<usize>)>;

fn make_layout(groups: &Groups) -> SharedPrefixLayout {
    SharedPrefixLayout::from_lengths(
        groups.iter().map(|(p, r)| PrefixGroup { prefix_len: *p, resp_lens: r.clone() }).collect(),
    )
    .unwrap()
}

/// The 16-bit type's unit roundoff: half an ulp, relative.
fn unit_roundoff<T: AttnElement>() -> f64 {
    if T::DTYPE == pref_kernels::DType::BF16 {
        2f64.powi(-8)
    } else {
        2f64.powi(-11)
    }
}

/// f32 arithmetic of the softmax and the mma sums, relative (exp2f 2 ulp, sums of <= T terms).
const F32_REL: f64 = 1e-5;

fn check(name: &str, got: &[f64], want: &[f64], bound: &[f64]) {
    for (i, ((g, w), b)) in got.iter().zip(want).zip(bound).enumerate() {
        assert!(g.is_finite(), "{name}[{i}] is not finite: {g}");
        assert!((g - w).abs() <= b + 1e-7, "{name}[{i}]: got {g}, want {w} (derived bound {b})");
    }
}

struct Run<T> {
    o: Vec<T>,
    lse: Vec<f32>,
    dq: Vec<T>,
    dk: Vec<T>,
    dv: Vec<T>,
}

fn run_gpu<T: AttnElement>(
    gpu: &Gpu,
    l: &SharedPrefixLayout,
    shape: AttnShape,
    q: &[T],
    k: &[T],
    v: &[T],
    dout: &[T],
) -> Run<T> {
    let s = gpu.default_stream();
    let dl = gpu.upload_prefix_layout(&s, l).unwrap();
    let (dq_, dk_, dv_, ddo) = (
        s.clone_htod(q).unwrap(),
        s.clone_htod(k).unwrap(),
        s.clone_htod(v).unwrap(),
        s.clone_htod(dout).unwrap(),
    );
    let poison = T::from_f32(777.0);
    let mut o = s.clone_htod(&vec![poison; q.len()]).unwrap();
    let mut lse = s.clone_htod(&vec![-7777.0f32; shape.q_heads * l.total_tokens()]).unwrap();
    gpu.shared_prefix_attention_forward(
        &s,
        &dq_.as_view(),
        &dk_.as_view(),
        &dv_.as_view(),
        &dl,
        shape,
        &mut o.as_view_mut(),
        &mut lse.as_view_mut(),
    )
    .unwrap();
    let mut gq = s.clone_htod(&vec![poison; q.len()]).unwrap();
    let mut gk = s.clone_htod(&vec![poison; k.len()]).unwrap();
    let mut gv = s.clone_htod(&vec![poison; v.len()]).unwrap();
    gpu.shared_prefix_attention_backward(
        &s,
        &AttnSaved {
            q: dq_.as_view(),
            k: dk_.as_view(),
            v: dv_.as_view(),
            o: o.as_view(),
            lse: lse.as_view(),
        },
        &ddo.as_view(),
        &dl,
        shape,
        &mut gq.as_view_mut(),
        &mut gk.as_view_mut(),
        &mut gv.as_view_mut(),
    )
    .unwrap();
    Run {
        o: s.clone_dtoh(&o).unwrap(),
        lse: s.clone_dtoh(&lse).unwrap(),
        dq: s.clone_dtoh(&gq).unwrap(),
        dk: s.clone_dtoh(&gk).unwrap(),
        dv: s.clone_dtoh(&gv).unwrap(),
    }
}

fn random<T: AttnElement>(r: &mut rand::rngs::StdRng, n: usize, scale: f32) -> Vec<T> {
    (0..n).map(|_| T::from_f32((0..3).map(|_| r.random_range(-1.0f32..1.0)).sum::<f32>() * scale)).collect()
}

fn wide<T: AttnElement>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

/// Forward and backward parity; `spike` multiplies the key of one token (row max placement).
fn parity<T: AttnElement>(gpu: &Gpu, seed: u64, groups: Groups, shape: AttnShape, spike: Option<usize>) {
    let l = make_layout(&groups);
    let t = l.total_tokens();
    let mut r = rng(seed, 400 + t as u64);
    let (wq, wk) = (shape.q_heads * shape.head_dim, shape.kv_heads * shape.head_dim);
    let q: Vec<T> = random(&mut r, t * wq, 1.0);
    let mut k: Vec<T> = random(&mut r, t * wk, 1.0);
    let v: Vec<T> = random(&mut r, t * wk, 1.0);
    let dout: Vec<T> = random(&mut r, t * wq, 1.0);
    if let Some(tok) = spike {
        for x in &mut k[tok * wk..(tok + 1) * wk] {
            *x = T::from_f32(x.to_f64() as f32 * 12.0);
        }
    }
    let got = run_gpu(gpu, &l, shape, &q, &k, &v, &dout);
    let want = forward(&q, &k, &v, &l, &shape).unwrap();
    let grads = backward(&q, &k, &v, &dout, &l, &shape).unwrap();
    let (ob, gb) = rounding_bounds(&q, &k, &v, &dout, &l, &shape, unit_roundoff::<T>(), F32_REL).unwrap();
    check("O", &wide(&got.o), &want.o, &ob);
    for (i, (g, w)) in got.lse.iter().zip(&want.lse).enumerate() {
        assert!((*g as f64 - w).abs() <= 2e-5 * (1.0 + w.abs()), "LSE[{i}]: got {g}, want {w}");
    }
    check("dQ", &wide(&got.dq), &grads.dq, &gb.dq);
    check("dK", &wide(&got.dk), &grads.dk, &gb.dk);
    check("dV", &wide(&got.dv), &grads.dv, &gb.dv);
}

fn case(name: &'static str, run: impl Fn(&Gpu, u64) + 'static) -> Case {
    Case { name, run: Box::new(run) }
}

fn isolation_and_determinism(gpu: &Gpu, seed: u64) {
    let groups: Groups = vec![(70, vec![40, 25, 66]), (10, vec![3, 90])];
    let l = make_layout(&groups);
    let shape = AttnShape::new(8, 2, 128);
    let t = l.total_tokens();
    let mut r = rng(seed, 499);
    let (wq, wk) = (8 * 128, 2 * 128);
    let q: Vec<bf16> = random(&mut r, t * wq, 1.0);
    let k: Vec<bf16> = random(&mut r, t * wk, 1.0);
    let v: Vec<bf16> = random(&mut r, t * wk, 1.0);
    let dout: Vec<bf16> = random(&mut r, t * wq, 1.0);
    let a = run_gpu(gpu, &l, shape, &q, &k, &v, &dout);
    let b = run_gpu(gpu, &l, shape, &q, &k, &v, &dout);
    let bits = |x: &[bf16]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.o), bits(&b.o), "forward not deterministic");
    assert_eq!(bits(&a.dq), bits(&b.dq), "dQ not deterministic");
    assert_eq!(bits(&a.dk), bits(&b.dk), "dK not deterministic");
    assert_eq!(bits(&a.dv), bits(&b.dv), "dV not deterministic");
    // Change response 1 of group 0 (tokens [110, 135)): every other token's O is bitwise equal.
    let (mut q2, mut k2, mut v2) = (q.clone(), k.clone(), v.clone());
    for x in [&mut q2, &mut k2, &mut v2] {
        let w = x.len() / t;
        x[110 * w..135 * w].iter_mut().for_each(|e| *e = bf16::from_f32(-e.to_f32() * 2.0));
    }
    let c = run_gpu(gpu, &l, shape, &q2, &k2, &v2, &dout);
    for tok in (0..t).filter(|t| !(110..135).contains(t)) {
        assert_eq!(
            bits(&a.o[tok * wq..(tok + 1) * wq]),
            bits(&c.o[tok * wq..(tok + 1) * wq]),
            "token {tok} changed"
        );
    }
    // dO only on response 2 of group 0 ([135, 201)): zero gradients on other responses' tokens.
    let mut d2 = vec![bf16::ZERO; dout.len()];
    d2[135 * wq..201 * wq].copy_from_slice(&dout[135 * wq..201 * wq]);
    let e = run_gpu(gpu, &l, shape, &q, &k, &v, &d2);
    for tok in (70..135).chain(201..t) {
        assert!(e.dq[tok * wq..(tok + 1) * wq].iter().all(|x| x.to_f32() == 0.0), "dQ leaked to token {tok}");
        assert!(e.dk[tok * wk..(tok + 1) * wk].iter().all(|x| x.to_f32() == 0.0), "dK leaked to token {tok}");
    }
}

fn bad_arguments(gpu: &Gpu, _seed: u64) {
    let s = gpu.default_stream();
    let l = make_layout(&vec![(4, vec![3])]);
    let dl = gpu.upload_prefix_layout(&s, &l).unwrap();
    let x = s.alloc_zeros::<bf16>(7 * 8 * 64).unwrap();
    let mut o = s.alloc_zeros::<bf16>(7 * 8 * 64).unwrap();
    let mut lse = s.alloc_zeros::<f32>(8 * 7).unwrap();
    let err = |shape: AttnShape,
               o: &mut pref_kernels::DeviceBuffer<bf16>,
               lse: &mut pref_kernels::DeviceBuffer<f32>| {
        gpu.shared_prefix_attention_forward(
            &s,
            &x.as_view(),
            &x.as_view(),
            &x.as_view(),
            &dl,
            shape,
            &mut o.as_view_mut(),
            &mut lse.as_view_mut(),
        )
        .unwrap_err()
        .to_string()
    };
    assert!(err(AttnShape::new(8, 8, 96), &mut o, &mut lse).contains("head dims"));
    assert!(err(AttnShape::new(8, 3, 64), &mut o, &mut lse).contains("multiple"));
    assert!(err(AttnShape::new(8, 2, 64), &mut o, &mut lse).contains("`k`"));
}

/// The v2 kernels (cp.async, ldmatrix, the unmasked-tile fast path) give v1's bits, forward and
/// backward, on poisoned outputs, for layouts with masked and fully unmasked key tiles in both
/// key ranges (a long prefix, long responses), partial tiles and GQA; v2 bitwise run to run.
fn v2_equals_v1<T: AttnElement>(gpu: &Gpu, seed: u64, groups: Groups, shape: AttnShape) {
    let l = make_layout(&groups);
    let t = l.total_tokens();
    let mut r = rng(seed, 97);
    let q = random::<T>(&mut r, t * shape.q_heads * shape.head_dim, 1.0);
    let k = random::<T>(&mut r, t * shape.kv_heads * shape.head_dim, 1.0);
    let v = random::<T>(&mut r, t * shape.kv_heads * shape.head_dim, 1.0);
    let s = gpu.default_stream();
    let dl = gpu.upload_prefix_layout(&s, &l).unwrap();
    let (dq, dk, dv) = (s.clone_htod(&q).unwrap(), s.clone_htod(&k).unwrap(), s.clone_htod(&v).unwrap());
    let run = |version| {
        let mut o = s.clone_htod(&vec![T::from_f32(777.0); q.len()]).unwrap();
        let mut lse = s.clone_htod(&vec![-7777.0f32; shape.q_heads * t]).unwrap();
        gpu.shared_prefix_attention_forward_version(
            &s,
            version,
            &dq.as_view(),
            &dk.as_view(),
            &dv.as_view(),
            &dl,
            shape,
            &mut o.as_view_mut(),
            &mut lse.as_view_mut(),
        )
        .unwrap();
        let o: Vec<u64> = s.clone_dtoh(&o).unwrap().iter().map(|x| x.to_f64().to_bits()).collect();
        (o, s.clone_dtoh(&lse).unwrap().iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
    };
    let (o1, l1) = run(AttnVersion::V1);
    let (o2, l2) = run(AttnVersion::V2);
    assert!(l2.iter().all(|&x| x != (-7777.0f32).to_bits()), "every LSE written");
    let first_diff = |a: &[u64], b: &[u64]| a.iter().zip(b).position(|(x, y)| x != y);
    let wide = |v: &[u32]| v.iter().map(|&x| x as u64).collect::<Vec<u64>>();
    assert_eq!(first_diff(&o1, &o2), None, "O: v2 vs v1, first differing element");
    assert_eq!(first_diff(&wide(&l1), &wide(&l2)), None, "LSE: v2 vs v1, first differing element");
    let again = run(AttnVersion::V2);
    assert!(again.0 == o2 && again.1 == l2, "v2 run to run");

    // The backward of each version from the same O, LSE and dO, on poisoned outputs.
    let dout = random::<T>(&mut r, q.len(), 1.0);
    let ddo = s.clone_htod(&dout).unwrap();
    let mut o = s.alloc_zeros::<T>(q.len()).unwrap();
    let mut lse = s.alloc_zeros::<f32>(shape.q_heads * t).unwrap();
    gpu.shared_prefix_attention_forward_version(
        &s,
        AttnVersion::V1,
        &dq.as_view(),
        &dk.as_view(),
        &dv.as_view(),
        &dl,
        shape,
        &mut o.as_view_mut(),
        &mut lse.as_view_mut(),
    )
    .unwrap();
    let bits = |b: &pref_kernels::DeviceBuffer<T>| -> Vec<u64> {
        s.clone_dtoh(b).unwrap().iter().map(|x| x.to_f64().to_bits()).collect()
    };
    let backward = |version| {
        let poison = T::from_f32(777.0);
        let mut gq = s.clone_htod(&vec![poison; q.len()]).unwrap();
        let mut gk = s.clone_htod(&vec![poison; k.len()]).unwrap();
        let mut gv = s.clone_htod(&vec![poison; v.len()]).unwrap();
        let saved = AttnSaved {
            q: dq.as_view(),
            k: dk.as_view(),
            v: dv.as_view(),
            o: o.as_view(),
            lse: lse.as_view(),
        };
        gpu.shared_prefix_attention_backward_version(
            &s,
            version,
            &saved,
            &ddo.as_view(),
            &dl,
            shape,
            &mut gq.as_view_mut(),
            &mut gk.as_view_mut(),
            &mut gv.as_view_mut(),
        )
        .unwrap();
        (bits(&gq), bits(&gk), bits(&gv))
    };
    let (b1, b2) = (backward(AttnVersion::V1), backward(AttnVersion::V2));
    let poison = T::from_f32(777.0).to_f64().to_bits();
    assert!(b2.0.iter().chain(&b2.1).chain(&b2.2).all(|&x| x != poison), "every gradient element written");
    assert_eq!(first_diff(&b1.0, &b2.0), None, "dQ: v2 vs v1, first differing element");
    assert_eq!(first_diff(&b1.1, &b2.1), None, "dK: v2 vs v1, first differing element");
    assert_eq!(first_diff(&b1.2, &b2.2), None, "dV: v2 vs v1, first differing element");
    assert!(backward(AttnVersion::V2) == b2, "v2 backward run to run");
}

/// The v3 kernels (every GEMM on wgmma; dK/dV's S^T and dP^T in the SS form) against the f64
/// references with the derived rounding bounds, on poisoned outputs, bitwise run to run. Where the kernels run
/// emulated (the emulator, the stand-in) the wgmma model sums as the mma.sync model does, so v3
/// must give v2's bits there: a misplaced descriptor offset or fragment would not. On a GPU
/// without sm_90a code, v3 must be refused.
fn v3_attention<T: AttnElement>(gpu: &Gpu, seed: u64, groups: Groups, shape: AttnShape) {
    let l = make_layout(&groups);
    let t = l.total_tokens();
    let mut r = rng(seed, 131);
    let q = random::<T>(&mut r, t * shape.q_heads * shape.head_dim, 1.0);
    let k = random::<T>(&mut r, t * shape.kv_heads * shape.head_dim, 1.0);
    let v = random::<T>(&mut r, t * shape.kv_heads * shape.head_dim, 1.0);
    let dout = random::<T>(&mut r, q.len(), 1.0);
    let s = gpu.default_stream();
    let dl = gpu.upload_prefix_layout(&s, &l).unwrap();
    let (dq, dk, dv) = (s.clone_htod(&q).unwrap(), s.clone_htod(&k).unwrap(), s.clone_htod(&v).unwrap());
    let ddo = s.clone_htod(&dout).unwrap();
    let poison = T::from_f32(777.0);
    // Forward then backward of `version`, the backward from this forward's O and LSE.
    let run = |version| -> pref_kernels::Result<[Vec<u64>; 5]> {
        let mut o = s.clone_htod(&vec![poison; q.len()]).unwrap();
        let mut lse = s.clone_htod(&vec![-7777.0f32; shape.q_heads * t]).unwrap();
        gpu.shared_prefix_attention_forward_version(
            &s,
            version,
            &dq.as_view(),
            &dk.as_view(),
            &dv.as_view(),
            &dl,
            shape,
            &mut o.as_view_mut(),
            &mut lse.as_view_mut(),
        )?;
        let mut gq = s.clone_htod(&vec![poison; q.len()]).unwrap();
        let mut gk = s.clone_htod(&vec![poison; k.len()]).unwrap();
        let mut gv = s.clone_htod(&vec![poison; v.len()]).unwrap();
        let saved = AttnSaved {
            q: dq.as_view(),
            k: dk.as_view(),
            v: dv.as_view(),
            o: o.as_view(),
            lse: lse.as_view(),
        };
        gpu.shared_prefix_attention_backward_version(
            &s,
            version,
            &saved,
            &ddo.as_view(),
            &dl,
            shape,
            &mut gq.as_view_mut(),
            &mut gk.as_view_mut(),
            &mut gv.as_view_mut(),
        )?;
        let bits = |b: &pref_kernels::DeviceBuffer<T>| -> Vec<u64> {
            s.clone_dtoh(b).unwrap().iter().map(|x| x.to_f64().to_bits()).collect()
        };
        let lse_bits = s.clone_dtoh(&lse).unwrap().iter().map(|x| (*x as f64).to_bits()).collect();
        Ok([bits(&o), lse_bits, bits(&gq), bits(&gk), bits(&gv)])
    };
    if !gpu.has_wgmma() {
        let Err(e) = run(AttnVersion::V3) else { panic!("v3 without sm_90a code must be refused") };
        assert!(e.to_string().contains("sm_90"), "{e}");
        println!("v3 refused as it must be on this device (no sm_90a code for it): {e}");
        return;
    }
    let got = run(AttnVersion::V3).unwrap();
    let f = |b: &[u64]| -> Vec<f64> { b.iter().map(|&x| f64::from_bits(x)).collect() };
    let want = forward(&q, &k, &v, &l, &shape).unwrap();
    let grads = backward(&q, &k, &v, &dout, &l, &shape).unwrap();
    let (ob, gb) = rounding_bounds(&q, &k, &v, &dout, &l, &shape, unit_roundoff::<T>(), F32_REL).unwrap();
    check("O (v3)", &f(&got[0]), &want.o, &ob);
    for (i, (g, w)) in f(&got[1]).iter().zip(&want.lse).enumerate() {
        assert!((g - w).abs() <= 2e-5 * (1.0 + w.abs()), "LSE (v3)[{i}]: got {g}, want {w}");
    }
    check("dQ (v3)", &f(&got[2]), &grads.dq, &gb.dq);
    check("dK (v3)", &f(&got[3]), &grads.dk, &gb.dk);
    check("dV (v3)", &f(&got[4]), &grads.dv, &gb.dv);
    assert!(run(AttnVersion::V3).unwrap() == got, "v3 run to run");
    if gpu.backend() == pref_kernels::BackendKind::Emulator || crate::is_standin(gpu) {
        let v2 = run(AttnVersion::V2).unwrap();
        for (i, name) in ["O", "LSE", "dQ", "dK", "dV"].iter().enumerate() {
            let first = got[i].iter().zip(&v2[i]).position(|(x, y)| x != y);
            assert_eq!(first, None, "{name}: v3 vs v2 (emulated), first differing element");
        }
    }
}

/// A group's outputs are bitwise the same alone and behind another group that moves its plan
/// tiles to odd indices (so different tiles would pair if pairing followed the list rather than
/// the group): the forward v2's 128-row tiles at d = 64 start at each group's start.
fn rows_independent_of_batch_position(gpu: &Gpu, seed: u64) {
    let shape = AttnShape::new(2, 1, 64);
    let group = (90, vec![50, 33, 70]);
    let (alone, behind) = (make_layout(&vec![group.clone()]), make_layout(&vec![(10, vec![20]), group]));
    let (n, off) = (alone.total_tokens(), behind.total_tokens() - alone.total_tokens());
    let w = shape.q_heads * shape.head_dim;
    let mut r = rng(seed, 31);
    let (q, k, v, dout) = (
        random::<bf16>(&mut r, n * w, 1.0),
        random::<bf16>(&mut r, n * 64, 1.0),
        random::<bf16>(&mut r, n * 64, 1.0),
        random::<bf16>(&mut r, n * w, 1.0),
    );
    let mut r2 = rng(seed, 32);
    let mut lead = |x: &[bf16], width: usize| {
        let mut out = random::<bf16>(&mut r2, off * width, 1.0);
        out.extend_from_slice(x);
        out
    };
    let (q2, k2, v2, d2) = (lead(&q, w), lead(&k, 64), lead(&v, 64), lead(&dout, w));
    let a = run_gpu(gpu, &alone, shape, &q, &k, &v, &dout);
    let b = run_gpu(gpu, &behind, shape, &q2, &k2, &v2, &d2);
    let bits = |x: &[bf16]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.o), bits(&b.o[off * w..]), "O depends on the group's place in the batch");
    assert_eq!(bits(&a.dq), bits(&b.dq[off * w..]), "dQ depends on the group's place in the batch");
    assert_eq!(bits(&a.dk), bits(&b.dk[off * 64..]), "dK depends on the group's place in the batch");
}

pub fn cases() -> Vec<Case> {
    vec![
        case("attn_bf16_d128_gqa4_odd_lengths_multi_group", |g, s| {
            parity::<bf16>(
                g,
                s,
                vec![(100, vec![37, 64, 1]), (0, vec![65, 3]), (129, vec![17])],
                AttnShape::new(8, 2, 128),
                None,
            )
        }),
        case("attn_f16_d64_mha_short_responses", |g, s| {
            parity::<f16>(g, s, vec![(63, vec![1, 1, 15]), (1, vec![127])], AttnShape::new(4, 4, 64), None)
        }),
        case("attn_bf16_d64_gqa8_g1", |g, s| {
            parity::<bf16>(g, s, vec![(70, vec![50])], AttnShape::new(8, 1, 64), None)
        }),
        case("attn_f16_d128_gqa8_p0_and_empty_responses", |g, s| {
            parity::<f16>(
                g,
                s,
                vec![(0, vec![5]), (0, vec![64, 64]), (3, vec![0, 9])],
                AttnShape::new(8, 1, 128),
                None,
            )
        }),
        case("attn_bf16_d128_row_max_in_prefix", |g, s| {
            parity::<bf16>(g, s, vec![(80, vec![30, 47])], AttnShape::new(4, 4, 128), Some(2))
        }),
        case("attn_f16_d64_row_max_in_response", |g, s| {
            parity::<f16>(g, s, vec![(80, vec![30, 47])], AttnShape::new(4, 2, 64), Some(81))
        }),
        case("attn_bf16_nondefault_scale", |g, s| {
            parity::<bf16>(
                g,
                s,
                vec![(33, vec![31, 2])],
                AttnShape { scale: 0.3, ..AttnShape::new(2, 1, 64) },
                None,
            )
        }),
        case("attn_v2_equals_v1_bf16_d64_long_prefix", |g, s| {
            v2_equals_v1::<bf16>(
                g,
                s,
                vec![(300, vec![200, 150, 3]), (64, vec![64])],
                AttnShape::new(4, 2, 64),
            )
        }),
        case("attn_v2_equals_v1_f16_d128_gqa", |g, s| {
            v2_equals_v1::<f16>(g, s, vec![(130, vec![129, 1]), (0, vec![70])], AttnShape::new(8, 2, 128))
        }),
        // d = 64 runs the forward v2 on 128-row query tiles (two plan tiles joined): pairs of prefix
        // and mixed tiles, pairs spanning responses, a lone last tile, a group without a prefix
        // (rows whose first key tiles are all masked), groups starting at odd plan-tile indices.
        case("attn_v2_equals_v1_f16_d64_paired_tiles", |g, s| {
            v2_equals_v1::<f16>(
                g,
                s,
                vec![(100, vec![20, 0, 90, 40]), (0, vec![129, 70]), (1, vec![60, 4]), (64, vec![0])],
                AttnShape::new(4, 1, 64),
            )
        }),
        case("attn_v2_d64_rows_independent_of_batch_position", rows_independent_of_batch_position),
        // v3 (wgmma): both head dims and dtypes, GQA, masked and unmasked key tiles in
        // both ranges, partial tiles, a group without a prefix and empty responses.
        case("attn_v3_bf16_d128_gqa_long_prefix", |g, s| {
            v3_attention::<bf16>(
                g,
                s,
                vec![(150, vec![129, 1, 40]), (0, vec![70])],
                AttnShape::new(8, 2, 128),
            )
        }),
        case("attn_v3_f16_d64_mixed_tiles", |g, s| {
            v3_attention::<f16>(
                g,
                s,
                vec![(100, vec![20, 0, 90]), (1, vec![60, 4]), (64, vec![0])],
                AttnShape::new(4, 1, 64),
            )
        }),
        case("attn_v3_bf16_d64_mha", |g, s| {
            v3_attention::<bf16>(g, s, vec![(70, vec![50, 33])], AttnShape::new(2, 2, 64))
        }),
        case("attn_v3_f16_d128_short", |g, s| {
            v3_attention::<f16>(g, s, vec![(3, vec![9, 1]), (0, vec![5])], AttnShape::new(2, 1, 128))
        }),
        case("attn_isolation_and_determinism", isolation_and_determinism),
        case("attn_bad_arguments", bad_arguments),
    ]
}
