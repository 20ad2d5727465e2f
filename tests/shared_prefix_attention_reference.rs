//! Tests of the shared-prefix attention reference and layout: finite differences, equivalence with
//! G separate causal attentions over [prefix ++ r_g], isolation, descriptors and helpers.
#![allow(clippy::needless_range_loop)] // tests index several parallel arrays by position
use pref_kernels::shared_prefix_attention::reference::{backward, forward};
use pref_kernels::shared_prefix_attention::{AttnShape, PrefixGroup, SharedPrefixLayout, TILE};
use proptest::prelude::*;
#[path = "common/pseudo.rs"]
mod pseudo;
use pseudo::pseudo;

fn layout(groups: &[(usize, &[usize])]) -> SharedPrefixLayout {
    SharedPrefixLayout::from_lengths(
        groups.iter().map(|(p, r)| PrefixGroup { prefix_len: *p, resp_lens: r.to_vec() }).collect(),
    )
    .unwrap()
}

#[test]
fn reference_gradients_match_finite_differences() {
    let l = layout(&[(3, &[2, 1]), (0, &[2])]);
    let shape = AttnShape::new(2, 1, 64);
    let t = l.total_tokens();
    let (q, k, v) =
        (pseudo(t * 2 * 64, 1, -1.0, 1.0), pseudo(t * 64, 2, -1.0, 1.0), pseudo(t * 64, 3, -1.0, 1.0));
    let dout = pseudo(t * 2 * 64, 4, -1.0, 1.0);
    let g = backward(&q, &k, &v, &dout, &l, &shape).unwrap();
    let objective = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
        forward(q, k, v, &l, &shape).unwrap().o.iter().zip(&dout).map(|(o, d)| o * *d as f64).sum()
    };
    let h = 1e-2f32;
    let fd = |which: usize, idx: usize| -> f64 {
        let (mut a, mut b) = ([q.clone(), k.clone(), v.clone()], [q.clone(), k.clone(), v.clone()]);
        a[which][idx] += h;
        b[which][idx] -= h;
        let den = a[which][idx] as f64 - b[which][idx] as f64;
        (objective(&a[0], &a[1], &a[2]) - objective(&b[0], &b[1], &b[2])) / den
    };
    for (which, grad) in [(0, &g.dq), (1, &g.dk), (2, &g.dv)] {
        for idx in (0..grad.len()).step_by(7) {
            let num = fd(which, idx);
            assert!(
                (num - grad[idx]).abs() < 1e-5 * (1.0 + grad[idx].abs()),
                "tensor {which} [{idx}]: fd {num} vs {}",
                grad[idx]
            );
        }
    }
}

/// The shared layout equals G separate causal attentions over [prefix ++ r_g]; prefix gradients
/// are the sums over the copies when the prefix rows' dO is given to one copy only.
#[test]
fn shared_layout_equals_separate_causal_attention() {
    let l = layout(&[(5, &[3, 0, 1, 4]), (2, &[1]), (0, &[3, 2])]);
    let shape = AttnShape::new(4, 2, 64);
    let (wq, wk) = (4 * 64, 2 * 64);
    let t = l.total_tokens();
    let (q, k, v, dout) = (
        pseudo(t * wq, 5, -1.0, 1.0),
        pseudo(t * wk, 6, -1.0, 1.0),
        pseudo(t * wk, 7, -1.0, 1.0),
        pseudo(t * wq, 8, -1.0, 1.0),
    );
    let shared = forward(&q, &k, &v, &l, &shape).unwrap();
    let gs = backward(&q, &k, &v, &dout, &l, &shape).unwrap();

    // Duplicated layout: every [prefix ++ r_g] as its own causal sequence (a group whose prefix is
    // the whole sequence and whose single response is empty).
    let dup_lens = l.duplicated_lengths();
    let dup = SharedPrefixLayout::from_lengths(
        dup_lens.iter().map(|&n| PrefixGroup { prefix_len: n, resp_lens: vec![0] }).collect(),
    )
    .unwrap();
    let (dq_, dk_, dv_) = (l.unpack(&q, wq).unwrap(), l.unpack(&k, wk).unwrap(), l.unpack(&v, wk).unwrap());
    let mut ddo = l.unpack(&dout, wq).unwrap();
    // Prefix rows of every copy but the first get zero dO.
    let (mut tok, mut b) = (0usize, 0usize);
    for g in l.groups() {
        for (ri, r) in g.resp_lens.iter().enumerate() {
            if ri > 0 {
                ddo[tok * wq..(tok + g.prefix_len) * wq].iter_mut().for_each(|x| *x = 0.0);
            }
            tok += g.prefix_len + r;
        }
        b += 1;
    }
    assert_eq!(b, l.groups().len());
    let sep = forward(&dq_, &dk_, &dv_, &dup, &shape).unwrap();
    let gd = backward(&dq_, &dk_, &dv_, &ddo, &dup, &shape).unwrap();
    // Outputs: every duplicated token's O equals the shared O of the packed token it maps to.
    let idx = l.duplicated_to_packed_index();
    for (dtok, &ptok) in idx.iter().enumerate() {
        for c in 0..wq {
            let (a, b) = (sep.o[dtok * wq + c], shared.o[ptok as usize * wq + c]);
            assert!((a - b).abs() < 1e-12, "O of duplicated token {dtok} (packed {ptok}): {a} vs {b}");
        }
    }
    // Gradients: the packed (prefix-summed) duplicated gradients equal the shared ones.
    for (name, dupg, sh, w) in
        [("dq", &gd.dq, &gs.dq, wq), ("dk", &gd.dk, &gs.dk, wk), ("dv", &gd.dv, &gs.dv, wk)]
    {
        let packed = l.pack(dupg, w, true).unwrap();
        for i in 0..packed.len() {
            assert!((packed[i] - sh[i]).abs() < 1e-11, "{name}[{i}]: {} vs {}", packed[i], sh[i]);
        }
    }
}

#[test]
fn changing_one_response_leaves_the_others_bitwise_unchanged() {
    let l = layout(&[(4, &[3, 2, 2]), (3, &[2, 2])]);
    let shape = AttnShape::new(2, 2, 64);
    let t = l.total_tokens();
    let w = 2 * 64;
    let (q, k, v) = (pseudo(t * w, 9, -1.0, 1.0), pseudo(t * w, 10, -1.0, 1.0), pseudo(t * w, 11, -1.0, 1.0));
    let base = forward(&q, &k, &v, &l, &shape).unwrap();
    // Response 1 of group 0 is tokens [7, 9).
    let (mut q2, mut k2, mut v2) = (q.clone(), k.clone(), v.clone());
    for x in [&mut q2, &mut k2, &mut v2] {
        x[7 * w..9 * w].iter_mut().for_each(|e| *e = -*e * 3.0);
    }
    let changed = forward(&q2, &k2, &v2, &l, &shape).unwrap();
    for tok in (0..t).filter(|t| !(7..9).contains(t)) {
        assert_eq!(base.o[tok * w..(tok + 1) * w], changed.o[tok * w..(tok + 1) * w], "token {tok} changed");
    }
    assert_ne!(base.o[7 * w..9 * w], changed.o[7 * w..9 * w]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn layout_invariants(groups in prop::collection::vec((0usize..150, prop::collection::vec(0usize..90, 1..5)), 1..4)) {
        let groups: Vec<PrefixGroup> = groups.into_iter().map(|(p, r)| PrefixGroup { prefix_len: p, resp_lens: r }).collect();
        let Ok(l) = SharedPrefixLayout::from_lengths(groups.clone()) else {
            // Only empty groups are rejected.
            prop_assert!(groups.iter().any(|g| g.prefix_len + g.resp_lens.iter().sum::<usize>() == 0));
            return Ok(());
        };
        let t = l.total_tokens();
        let seg = l.token_segments();
        // Brute-force pair count equals the closed form; the mask matches its definition.
        let mut pairs = 0u64;
        for i in 0..t {
            for j in 0..t {
                let a = SharedPrefixLayout::allowed(&seg, i, j);
                let same_group = seg[i][0] == seg[j][0];
                let j_prefix = j >= seg[j][0] && j < seg[j][1];
                let own = seg[i][2] == seg[j][2];
                prop_assert_eq!(a, same_group && j <= i && (j_prefix || own));
                pairs += a as u64;
            }
        }
        prop_assert_eq!(pairs, l.attended_pairs());
        // Tiles cover every token once, never cross a group, and hold at most TILE tokens.
        let tiles = l.tiles();
        let mut next = 0i32;
        for tl in &tiles {
            prop_assert_eq!(tl[0], next);
            prop_assert!(tl[1] > tl[0] && (tl[1] - tl[0]) as usize <= TILE);
            prop_assert!(tl[2] <= tl[0] && tl[1] <= tl[4]);
            next = tl[1];
        }
        prop_assert_eq!(next as usize, t);
        // pack(unpack(x)) = x, positions restart at P for every response.
        let x: Vec<i64> = (0..t as i64).collect();
        prop_assert_eq!(l.pack(&l.unpack(&x, 1).unwrap(), 1, false).unwrap(), x);
        let pos = l.position_ids();
        let dup_pos: Vec<i64> = l.duplicated_lengths().iter().flat_map(|&n| 0..n as i64).collect();
        prop_assert_eq!(l.unpack(&pos, 1).unwrap(), dup_pos);
    }
}

#[test]
fn bad_descriptors_and_shapes_are_clear_errors() {
    let e = |r: pref_kernels::Result<SharedPrefixLayout>| r.unwrap_err().to_string();
    // Valid: two groups.
    assert!(SharedPrefixLayout::from_descriptor(&[0, 7], &[3, 2], &[vec![3, 5, 7], vec![9, 10]], 10).is_ok());
    assert!(e(SharedPrefixLayout::from_descriptor(&[0, 6], &[3, 2], &[vec![3, 5, 7], vec![8, 10]], 10))
        .contains("expected 7"));
    assert!(e(SharedPrefixLayout::from_descriptor(&[0], &[3], &[vec![3, 6, 5]], 6)).contains("overlap"));
    assert!(e(SharedPrefixLayout::from_descriptor(&[0], &[3], &[vec![4, 6]], 6)).contains("first response"));
    assert!(e(SharedPrefixLayout::from_descriptor(&[0], &[3], &[vec![3, 12]], 10)).contains("beyond"));
    assert!(e(SharedPrefixLayout::from_descriptor(&[0], &[3], &[vec![3, 5]], 10)).contains("total_tokens"));
    assert!(e(SharedPrefixLayout::from_descriptor(&[0], &[3], &[vec![3]], 3)).contains("G >= 1"));
    assert!(e(SharedPrefixLayout::from_descriptor(&[0, 3], &[3], &[vec![3, 3]], 3))
        .contains("one entry per group"));
    assert!(e(SharedPrefixLayout::from_lengths(vec![PrefixGroup { prefix_len: 0, resp_lens: vec![0, 0] }]))
        .contains("empty"));
    assert!(e(SharedPrefixLayout::from_lengths(vec![])).contains("at least one group"));
    let shape_err = |s: AttnShape| s.validate().unwrap_err().to_string();
    assert!(shape_err(AttnShape::new(8, 8, 96)).contains("head dims"));
    assert!(shape_err(AttnShape::new(6, 4, 64)).contains("multiple"));
    assert!(shape_err(AttnShape { scale: 0.0, ..AttnShape::new(8, 8, 64) }).contains("scale"));
    let l = layout(&[(2, &[1])]);
    let short = vec![0.0f32; 10];
    let r = forward(&short, &short, &short, &l, &AttnShape::new(1, 1, 64)).unwrap_err().to_string();
    assert!(r.contains("`q`"), "{r}");
}
