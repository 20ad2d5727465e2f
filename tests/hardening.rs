//! Hostile inputs through the public constructors and the C ABI: random and extreme integers never
//! panic, never wrap, and never give `Ok` for an impossible layout; the C ABI answers 0 or -1
//! (never -2, a caught panic). Kernels reached with garbage pointers run on the emulator, whose
//! memcheck stops them before any access outside its allocations.
use pref_kernels::ffi::{prefk_prefix_layout, prefk_token_logprobs_forward, PREFK_DEVICE_EMULATOR};
use pref_kernels::shared_prefix_attention::{AttnShape, PrefixGroup, SharedPrefixLayout};
use pref_kernels::{LogitsLayout, TokenLogprobsConfig};
use proptest::prelude::*;

fn extreme_usize() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..100,
        Just(usize::MAX),
        Just(usize::MAX - 1),
        Just(i32::MAX as usize),
        Just(i32::MAX as usize + 1),
        Just(1usize << 40),
        any::<usize>(),
    ]
}

fn extreme_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        -3i64..100,
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i32::MAX as i64),
        Just(i32::MAX as i64 + 1),
        Just(1i64 << 40),
        any::<i64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prefix_layouts_from_lengths_never_wrap(
        groups in prop::collection::vec((extreme_usize(), prop::collection::vec(extreme_usize(), 0..4)), 0..4)
    ) {
        let gs: Vec<PrefixGroup> =
            groups.iter().map(|(p, r)| PrefixGroup { prefix_len: *p, resp_lens: r.clone() }).collect();
        if let Ok(l) = SharedPrefixLayout::from_lengths(gs) {
            let exact: u128 = groups.iter().map(|(p, r)| *p as u128 + r.iter().map(|&x| x as u128).sum::<u128>()).sum();
            prop_assert_eq!(l.total_tokens() as u128, exact, "total must be the exact sum");
            prop_assert!(l.total_tokens() <= i32::MAX as usize);
            if l.total_tokens() <= 1 << 16 {
                prop_assert_eq!(l.position_ids().len(), l.total_tokens());
                prop_assert_eq!(l.token_segments().len(), l.total_tokens());
                let _ = l.tiles();
            }
        }
    }

    #[test]
    fn shard_tilings_never_panic_and_agree_with_the_c_abi(
        shards in prop::collection::vec((extreme_i64(), extreme_i64()), 0..5),
        vocab in extreme_i64(),
    ) {
        let (starts, sizes): (Vec<i64>, Vec<i64>) = shards.iter().cloned().unzip();
        // SAFETY: host arrays of n_shards values each.
        let rc = unsafe {
            pref_kernels::ffi::prefk_vocab_check_tiling(starts.as_ptr(), sizes.as_ptr(), starts.len() as i64, vocab)
        };
        prop_assert!(rc == 0 || rc == -1, "rc {}", rc);
        if rc == 0 {
            // A tiling: sorted by start, each shard begins where the last ended, ending at vocab.
            let mut v: Vec<(i64, i64)> = shards.clone();
            v.sort();
            let mut next = 0i64;
            for (a, b) in v {
                prop_assert!(a == next && b >= 1);
                next = a + b;
            }
            prop_assert_eq!(next, vocab);
        }
    }

    #[test]
    fn prefix_layouts_from_descriptors_never_panic(
        starts in prop::collection::vec(extreme_usize(), 0..3),
        prefixes in prop::collection::vec(extreme_usize(), 0..3),
        offsets in prop::collection::vec(prop::collection::vec(extreme_usize(), 0..4), 0..3),
        total in extreme_usize(),
    ) {
        if let Ok(l) = SharedPrefixLayout::from_descriptor(&starts, &prefixes, &offsets, total) {
            prop_assert!(l.total_tokens() <= i32::MAX as usize);
            if l.total_tokens() <= 1 << 16 {
                prop_assert_eq!(l.position_ids().len(), l.total_tokens());
            }
        }
    }

    #[test]
    fn c_abi_prefix_layout_answers_0_or_minus_1(
        groups in prop::collection::vec((extreme_i64(), prop::collection::vec(extreme_i64(), 0..4)), 0..4)
    ) {
        let prefix: Vec<i64> = groups.iter().map(|g| g.0).collect();
        let counts: Vec<i64> = groups.iter().map(|g| g.1.len() as i64).collect();
        let lens: Vec<i64> = groups.iter().flat_map(|g| g.1.iter().copied()).collect();
        let (mut n_tokens, mut n_tiles) = (0i64, 0i64);
        // SAFETY: the arrays hold n_groups and sum(counts) elements; outputs are queried with null.
        let rc = unsafe {
            prefk_prefix_layout(&pref_kernels::ffi::PrefkPrefixLayoutArgs { prefix_lens: prefix.as_ptr(), resp_counts: counts.as_ptr(), resp_lens: lens.as_ptr(), n_groups: groups.len() as i64, n_tokens: &mut n_tokens, n_tiles: &mut n_tiles, tiles: std::ptr::null_mut(), seg_lo2: std::ptr::null_mut(), ..pref_kernels::ffi::PrefkPrefixLayoutArgs::new() })
        };
        prop_assert!(rc == 0 || rc == -1, "rc {}", rc);
        if rc == 0 {
            prop_assert!(n_tokens >= 1 && n_tokens <= i32::MAX as i64);
        }
    }

    #[test]
    fn c_abi_workspace_size_never_wraps(s in extreme_i64(), p in extreme_i64()) {
        let n = pref_kernels::ffi::prefk_preference_loss_workspace_len(s, p);
        let exact = s.max(0) as i128 * 13 + p.max(0) as i128 * (6 + 8);
        prop_assert!(n == exact as i64 && exact <= i64::MAX as i128 || n == -1, "{} for {} {}", n, s, p);
    }

    #[test]
    fn logits_layouts_and_shapes_never_panic(n in extreme_usize(), v in extreme_usize(), stride in extreme_usize(),
                                             hq in extreme_usize(), hkv in extreme_usize(), d in extreme_usize()) {
        let l = LogitsLayout { n_rows: n, vocab: v, row_stride: stride };
        if let Ok(span) = l.span() {
            prop_assert!(n == 0 || span as u128 == (n as u128 - 1) * stride as u128 + v as u128);
        }
        let _ = l.validate();
        let _ = AttnShape::new(hq, hkv, d).validate();
    }

    #[test]
    fn temperatures_whose_reciprocal_overflows_are_refused(t in prop_oneof![any::<f32>(), Just(1e-45f32), Just(f32::MIN_POSITIVE), Just(3e-39f32)]) {
        let ok = TokenLogprobsConfig { temperature: t, ..Default::default() }.validate().is_ok();
        prop_assert_eq!(ok, t.is_finite() && t > 0.0 && (1.0 / t).is_finite(), "T = {:e}", t);
    }

    /// The loss and attention entry points with random sizes and garbage pointers on the emulator.
    #[test]
    fn c_abi_loss_and_attention_on_the_emulator_answer_0_or_minus_1(
        n_tokens in extreme_i64(), n_seqs in extreme_i64(), seq_len in extreme_i64(), n_pairs in extreme_i64(),
        p in prop::collection::vec(prop_oneof![Just(0u64), any::<u64>().prop_map(|p| p & !255)], 8),
        heads in (-2i32..40, -2i32..10, prop_oneof![Just(64i32), Just(128), any::<i32>()]),
        n_tiles in extreme_i64(),
    ) {
        if !pref_kernels::runtime::emulator::built() {
            return Ok(());
        }
        let term = pref_kernels::ffi::PrefkLossTerm { kind: 0, weight: 1.0, beta: 0.1, p0: 0.0, p1: 0.0, flags: 0 };
        // SAFETY: deliberately invalid arguments (see above); `term` is valid host memory.
        let rc = unsafe {
            pref_kernels::ffi::prefk_preference_loss(&pref_kernels::ffi::PrefkPreferenceLossArgs { device: PREFK_DEVICE_EMULATOR, stream: 0, logp: p[0], mask: p[1], weights: 0, ref_logp: p[2], ref_seq: 0, seq_weights: p[1], n_tokens, cu_seqlens: p[3], n_seqs, seq_len, chosen: p[4], rejected: p[5], n_pairs, terms: &term, n_terms: 1, divergence: 0, alpha: 0.5, aggregation: 0, grad_scale: 1.0, pair_out: 0, metrics: p[6], grad_logp: p[7], workspace: p[0], status: 0, ..pref_kernels::ffi::PrefkPreferenceLossArgs::new() })
        };
        prop_assert!(rc == -1 || rc == 0, "loss rc {}", rc);
        // SAFETY: as above.
        let rc = unsafe {
            pref_kernels::ffi::prefk_shared_prefix_attention_forward(&pref_kernels::ffi::PrefkSharedPrefixAttentionForwardArgs { device: PREFK_DEVICE_EMULATOR, stream: 0, dtype_code: 2, q: p[0], k: p[1], v: p[2], o: p[3], lse: p[4], tiles: p[5], seg_lo2: p[6], n_tiles, n_tokens, q_heads: heads.0, kv_heads: heads.1, head_dim: heads.2, scale: 0.125, ..pref_kernels::ffi::PrefkSharedPrefixAttentionForwardArgs::new() })
        };
        prop_assert!(rc == -1, "attention rc {}", rc);
    }

    /// Random sizes and garbage (aligned) device pointers on the emulator: validation or memcheck
    /// refuses them; nothing crashes and no panic escapes.
    #[test]
    fn c_abi_token_logprobs_on_the_emulator_answers_0_or_minus_1(
        n in extreme_i64(), v in extreme_i64(), stride in extreme_i64(),
        ptrs in prop::collection::vec(prop_oneof![Just(0u64), any::<u64>().prop_map(|p| p & !15), Just(16u64)], 4),
        temperature in prop_oneof![Just(1.0f32), Just(0.0f32), Just(f32::NAN), Just(1e-45f32)],
    ) {
        if !pref_kernels::runtime::emulator::built() {
            return Ok(());
        }
        // SAFETY: deliberately invalid arguments; the contract is that they are rejected (the
        // emulator's memcheck covers the pointers validation cannot judge).
        let rc = unsafe {
            prefk_token_logprobs_forward(&pref_kernels::ffi::PrefkTokenLogprobsForwardArgs { device: PREFK_DEVICE_EMULATOR, stream: 0, dtype_code: 2, index_code: 1, logits: ptrs[0], targets: ptrs[1], logp: ptrs[2], lse: ptrs[3], stats: 0, entropy: 0, log_sum_sq: 0, status: 0, n_rows: n, vocab: v, row_stride: stride, ignore_index: -100, temperature, ..pref_kernels::ffi::PrefkTokenLogprobsForwardArgs::new() })
        };
        let empty = n == 0 && v >= 1 && stride >= v && temperature == 1.0 && ptrs.iter().all(|&p| p != 0);
        prop_assert!(rc == -1 || (rc == 0 && empty), "rc {} for n {} v {} stride {} ptrs {:x?}", rc, n, v, stride, ptrs);
    }
}

#[test]
fn shard_tilings_through_the_c_abi() {
    let check = |starts: &[i64], sizes: &[i64], vocab: i64| {
        // SAFETY: host arrays of starts.len() values each.
        unsafe {
            pref_kernels::ffi::prefk_vocab_check_tiling(
                starts.as_ptr(),
                sizes.as_ptr(),
                starts.len() as i64,
                vocab,
            )
        }
    };
    assert_eq!(check(&[13, 0, 27], &[14, 13, 13], 40), 0, "a tiling in any rank order");
    assert_eq!(check(&[0, 13], &[13, 14], 40), -1, "a gap at the end");
    assert_eq!(check(&[0, 14], &[13, 26], 40), -1, "a gap in the middle");
    assert_eq!(check(&[0, 12], &[13, 28], 40), -1, "an overlap");
    assert_eq!(check(&[], &[], 40), -1, "no shards");
    // SAFETY: null is refused before any read.
    assert_eq!(
        unsafe { pref_kernels::ffi::prefk_vocab_check_tiling(std::ptr::null(), std::ptr::null(), 2, 40) },
        -1
    );
}

#[test]
fn the_issue_examples_are_errors() {
    let e =
        SharedPrefixLayout::from_lengths(vec![PrefixGroup { prefix_len: usize::MAX, resp_lens: vec![2] }])
            .unwrap_err()
            .to_string();
    assert!(e.contains("exceeds i32::MAX"), "{e}");
    let e =
        TokenLogprobsConfig { temperature: 1e-45, ..Default::default() }.validate().unwrap_err().to_string();
    assert!(e.contains("1 / T overflows f32"), "{e}");
    let prefix = [i64::MAX];
    let counts = [1i64];
    let lens = [2i64];
    let (mut t, mut k) = (0i64, 0i64);
    // SAFETY: arrays of the declared sizes; outputs queried with null.
    let rc = unsafe {
        prefk_prefix_layout(&pref_kernels::ffi::PrefkPrefixLayoutArgs {
            prefix_lens: prefix.as_ptr(),
            resp_counts: counts.as_ptr(),
            resp_lens: lens.as_ptr(),
            n_groups: 1,
            n_tokens: &mut t,
            n_tiles: &mut k,
            tiles: std::ptr::null_mut(),
            seg_lo2: std::ptr::null_mut(),
            ..pref_kernels::ffi::PrefkPrefixLayoutArgs::new()
        })
    };
    assert_eq!(rc, -1, "an overflowing layout must be an error, not a caught panic");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The GRPO and group-loss entry points with random sizes, configs and garbage pointers on the
    /// emulator: refused by validation or by memcheck, never a crash or an escaped panic.
    #[test]
    fn c_abi_group_losses_on_the_emulator_answer_0_or_minus_1(
        n_tokens in extreme_i64(), n_seqs in extreme_i64(), seq_len in extreme_i64(), list in extreme_i64(),
        p in prop::collection::vec(prop_oneof![Just(0u64), any::<u64>().prop_map(|p| p & !255)], 8),
        loss_type in 0u32..8, kind in 0u32..4,
        hyper in prop::collection::vec(prop_oneof![Just(0.2f32), Just(0.0), Just(f32::NAN), Just(-1.0), Just(1e30)], 4),
    ) {
        if !pref_kernels::runtime::emulator::built() {
            return Ok(());
        }
        let cfg = pref_kernels::ffi::PrefkGrpoConfig {
            loss_type, importance: loss_type % 2, epsilon_low: hyper[0], epsilon_high: hyper[1], delta: 0.0,
            beta: hyper[2], bias_corrected_kl: 0, entropy_coef: 0.0, top_entropy_quantile: 1.0, grad_scale: 1.0,
            agg_param: hyper[3], tau_pos: 1.0, tau_neg: 1.05, accumulation_steps: loss_type % 3,
            off_policy_mask_threshold: hyper[1], vespo_k_pos: hyper[2], vespo_lambda_pos: 3.0, vespo_k_neg: 3.0,
            vespo_lambda_neg: hyper[0],
        };
        // SAFETY: deliberately invalid arguments; `cfg` is valid host memory.
        let rc = unsafe {
            pref_kernels::ffi::prefk_grpo_loss(&pref_kernels::ffi::PrefkGrpoLossArgs { device: PREFK_DEVICE_EMULATOR, stream: 0, config: &cfg, logp: p[0], old_logp: p[1], sampling_logp: p[2], ref_logp: p[2], mask: p[3], is_weights: 0, entropy: 0, advantages: p[4], n_tokens, cu_seqlens: p[5], n_seqs, seq_len, metrics: p[6], grad_logp: p[7], grad_entropy: 0, workspace: p[0], status: 0, ..pref_kernels::ffi::PrefkGrpoLossArgs::new() })
        };
        prop_assert!(rc == -1 || rc == 0, "grpo rc {}", rc);
        // SAFETY: as above.
        let rc = unsafe {
            pref_kernels::ffi::prefk_group_loss(&pref_kernels::ffi::PrefkGroupLossArgs { device: PREFK_DEVICE_EMULATOR, stream: 0, kind, beta: hyper[0], p0: 1.0, p1: 1.0, kl_given: f32::NAN, flags: 4, list_size: list, logp: p[0], mask: p[1], ref_logp: p[2], ref_seq: 0, labels: p[3], n_tokens, cu_seqlens: p[4], n_seqs, seq_len, grad_scale: 1.0, seq_out: 0, metrics: p[5], grad_logp: p[6], workspace: p[7], status: 0, ..pref_kernels::ffi::PrefkGroupLossArgs::new() })
        };
        prop_assert!(rc == -1 || rc == 0, "group rc {}", rc);
        // SAFETY: a null config is refused.
        let rc = unsafe {
            pref_kernels::ffi::prefk_grpo_loss(&pref_kernels::ffi::PrefkGrpoLossArgs { device: PREFK_DEVICE_EMULATOR, stream: 0, config: std::ptr::null(), logp: p[0], old_logp: 0, sampling_logp: 0, ref_logp: 0, mask: 0, is_weights: 0, entropy: 0, advantages: p[4], n_tokens, cu_seqlens: 0, n_seqs, seq_len, metrics: p[6], grad_logp: p[7], grad_entropy: 0, workspace: p[0], status: 0, ..pref_kernels::ffi::PrefkGrpoLossArgs::new() })
        };
        prop_assert_eq!(rc, -1);
    }

    #[test]
    fn c_abi_group_workspace_sizes_never_wrap(s in extreme_i64()) {
        let g = pref_kernels::ffi::prefk_grpo_workspace_len(s);
        let exact = s.max(0) as i128 * pref_kernels::params::GRPO_SEQ_FIELDS as i128 + 4;
        prop_assert!(g == exact as i64 && exact <= i64::MAX as i128 || g == -1, "{} for {}", g, s);
        let k = pref_kernels::ffi::prefk_group_loss_workspace_len(s);
        let exact = s.max(0) as i128 * 15;
        prop_assert!(k == exact as i64 && exact <= i64::MAX as i128 || k == -1, "{} for {}", k, s);
    }
}
