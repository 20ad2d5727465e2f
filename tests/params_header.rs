//! `kernels/params.h` is the source of truth for the kernels' parameter structs. This test parses
//! the header (field types and names, in order), computes the C layout, and checks it field by
//! field against the Rust mirrors in `src/params.rs`, so a field added, removed, renamed or
//! reordered on one side only fails here (the compile-time asserts pin sizes and a few offsets).
use std::mem::{offset_of, size_of};

use pref_kernels::params::*;

/// (field name, offset) lists of the Rust structs.
macro_rules! fields {
    ($t:ty: $($f:ident),* $(,)?) => {
        (size_of::<$t>(), vec![$((stringify!($f).to_string(), offset_of!($t, $f))),*])
    };
}

#[path = "common/c_header.rs"]
mod c_header;
use c_header::parse_structs as parse_header;

#[test]
fn rust_mirrors_match_the_header_field_by_field() {
    let header = parse_header(include_str!("../kernels/params.h"));
    let rust = [
        (
            "TokenLogprobsFwdParams",
            fields!(TokenLogprobsFwdParams: logits, targets, logp, lse, entropy, status, n_rows, row_stride, vocab, ignore_index, inv_temperature, reserved, stats, log_sum_sq, mean_logits, is_top1),
        ),
        (
            "TokenTopkParams",
            fields!(TokenTopkParams: logits, targets, stats, topk_logp, topk_ids, status, n_rows, row_stride, vocab, ignore_index, k, inv_temperature, reserved),
        ),
        (
            "TokenLogprobsBwdParams",
            fields!(TokenLogprobsBwdParams: logits, targets, stats, grad_logp, grad_logits, status, n_rows, logits_stride, grad_stride, vocab, ignore_index, inv_temperature, reserved, entropy, grad_entropy),
        ),
        (
            "SeqStatsParams",
            fields!(SeqStatsParams: logp, mask, weights, ref_logp, cu_seqlens, stats, scores, status, n_tokens, n_seqs, seq_len, log_tau, mode),
        ),
        (
            "TokenGradParams",
            fields!(TokenGradParams: logp, mask, weights, cu_seqlens, seq_coef, dscores, stats, grad_logp, n_tokens, n_seqs, seq_len, log_tau, mode, scale, reserved),
        ),
        ("LossTerm", fields!(LossTerm: kind, weight, beta, p0, p1, p2, agg, flags)),
        (
            "PreferenceLossParams",
            fields!(PreferenceLossParams: stats, ref_seq, chosen, rejected, pair_out, metrics, pair_coef, seq_coef, status, n_seqs, n_pairs, n_terms, divergence, alpha_div, grad_scale, terms, batch_pairs, batch_nll_count, flags, seq_weights, pair_sort),
        ),
        (
            "SharedPrefixAttentionParams",
            fields!(SharedPrefixAttentionParams: q, k, v, o, lse, dout, dq, dk, dv, delta, tiles, seg_lo2, n_tokens, n_tiles, q_heads, kv_heads, scale, reserved),
        ),
        (
            "GrpoParams",
            fields!(GrpoParams: logp, old_logp, sampling_logp, ref_logp, mask, is_weights, entropy, advantages, cu_seqlens, seq_work, threshold, metrics, grad_logp, grad_entropy, status, n_tokens, n_seqs, seq_len, agg, surrogate, flags, eps_low, eps_high, delta, beta, entropy_coef, quantile, agg_param, tau_pos, tau_neg, grad_scale, accum_steps, off_policy_threshold, vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg, batch_seqs, batch_tokens, reserved),
        ),
        (
            "GroupLossParams",
            fields!(GroupLossParams: stats, ref_seq, labels, seq_coef, seq_out, scratch, metrics, n_seqs, group_size, kind, flags, beta, p0, p1, kl_given, grad_scale, reserved),
        ),
        (
            "LinearRowsParams",
            fields!(LinearRowsParams: src, dst, index, status, n_rows, width, src_stride, dst_stride, bound),
        ),
        ("LinearBiasParams", fields!(LinearBiasParams: bias, logits, n_rows, vocab)),
        (
            "VocabShardFwdParams",
            fields!(VocabShardFwdParams: logits, targets, partials, status, n_rows, row_stride, shard_vocab, vocab_start, vocab, ignore_index, inv_temperature, reserved),
        ),
        (
            "VocabFinalizeParams",
            fields!(VocabFinalizeParams: partials, targets, logp, lse, entropy, status, n_rows, n_shards, vocab, ignore_index, stats, inv_temperature, reserved),
        ),
        ("VocabShardBwdParams", fields!(VocabShardBwdParams: rows, vocab_start, vocab)),
    ];
    assert_eq!(header.len(), rust.len(), "structs in params.h: {:?}", header.keys().collect::<Vec<_>>());
    for (name, (size, fields)) in rust {
        let (hsize, hfields) = header.get(name).unwrap_or_else(|| panic!("{name} missing from params.h"));
        assert_eq!(&fields, hfields, "{name}: fields/offsets differ between params.h and src/params.rs");
        assert_eq!(size, *hsize, "{name}: size differs");
    }
}

#[test]
fn status_bits_and_constants_match_the_header() {
    let h = include_str!("../kernels/params.h");
    for (name, value) in [
        ("PREFK_STATUS_BAD_TARGET", STATUS_BAD_TARGET as usize),
        ("PREFK_STATUS_BAD_SEQLENS", STATUS_BAD_SEQLENS as usize),
        ("PREFK_STATUS_BAD_PAIR", STATUS_BAD_PAIR as usize),
        ("PREFK_STATUS_BAD_ROW_INDEX", pref_kernels::params::STATUS_BAD_ROW_INDEX as usize),
        ("PREFK_STATUS_BAD_SHARDS", STATUS_BAD_SHARDS as usize),
        ("PREFK_VP_STATS", VP_STATS),
        ("PREFK_VP_MAX", VP_MAX),
        ("PREFK_VP_SUMEXP", VP_SUMEXP),
        ("PREFK_VP_ENTROPY", VP_ENTROPY),
        ("PREFK_VP_TARGET", VP_TARGET),
        ("PREFK_VP_OWNER", VP_OWNER),
        ("PREFK_MAX_LOSS_TERMS", MAX_LOSS_TERMS),
        ("PREFK_SEQ_STATS", pref_kernels::seq_reduce::SEQ_STATS_LEN),
        ("PREFK_PAIR_COLUMNS", pref_kernels::preference_loss::PAIR_COLUMNS),
        ("PREFK_METRICS", pref_kernels::preference_loss::METRICS_LEN),
        ("PREFK_AGG_WMEAN", pref_kernels::seq_reduce::ReduceMode::WeightedMean as usize),
        ("PREFK_ATTN_TILE", pref_kernels::shared_prefix_attention::TILE),
        ("PREFK_GRPO_SEQ_FIELDS", pref_kernels::params::GRPO_SEQ_FIELDS),
        ("PREFK_GRPO_METRICS", pref_kernels::grpo::GRPO_METRICS_LEN),
        ("PREFK_GRPO_AGG_CONSTANT_OR_TOKENS", 3),
        ("PREFK_GRPO_SURR_SAPO", 2),
    ] {
        let line = h
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} not in params.h"));
        let v: usize = line.split_whitespace().nth(2).unwrap().trim_end_matches('u').parse().unwrap();
        assert_eq!(v, value, "{name}");
    }
}

/// With `--features regen-bindings` (libclang via LIBCLANG_PATH): bindgen's structs have the
/// committed structs' size and field offsets.
#[cfg(feature = "regen-bindings")]
#[test]
fn bindgen_output_matches_the_committed_structs() {
    use pref_kernels::params::generated as g;
    macro_rules! same {
        ($t:ident: $($f:ident),*) => {
            assert_eq!(size_of::<g::$t>(), size_of::<$t>(), stringify!($t));
            $(assert_eq!(offset_of!(g::$t, $f), offset_of!($t, $f), concat!(stringify!($t), ".", stringify!($f)));)*
        };
    }
    same!(TokenLogprobsFwdParams: logits, targets, logp, lse, entropy, status, n_rows, row_stride, vocab, ignore_index, inv_temperature, reserved, stats, log_sum_sq);
    same!(TokenLogprobsBwdParams: logits, targets, stats, grad_logp, grad_logits, status, n_rows, logits_stride, grad_stride, vocab, ignore_index, inv_temperature, reserved, entropy, grad_entropy);
    same!(SeqStatsParams: logp, mask, weights, ref_logp, cu_seqlens, stats, scores, status, n_tokens, n_seqs, seq_len, log_tau, mode);
    same!(TokenGradParams: logp, mask, weights, cu_seqlens, seq_coef, dscores, stats, grad_logp, n_tokens, n_seqs, seq_len, log_tau, mode, scale, reserved);
    same!(LossTerm: kind, weight, beta, p0, p1, p2, agg, flags);
    same!(PreferenceLossParams: stats, ref_seq, chosen, rejected, pair_out, metrics, pair_coef, seq_coef, status, n_seqs, n_pairs, n_terms, divergence, alpha_div, grad_scale, terms, batch_pairs, batch_nll_count, flags, seq_weights, pair_sort);
    same!(SharedPrefixAttentionParams: q, k, v, o, lse, dout, dq, dk, dv, delta, tiles, seg_lo2, n_tokens, n_tiles, q_heads, kv_heads, scale, reserved);
    same!(GrpoParams: logp, old_logp, sampling_logp, ref_logp, mask, is_weights, entropy, advantages, cu_seqlens, seq_work, threshold, metrics, grad_logp, grad_entropy, status, n_tokens, n_seqs, seq_len, agg, surrogate, flags, eps_low, eps_high, delta, beta, entropy_coef, quantile, agg_param, tau_pos, tau_neg, grad_scale, accum_steps, off_policy_threshold, vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg, reserved);
    same!(GroupLossParams: stats, ref_seq, labels, seq_coef, seq_out, scratch, metrics, n_seqs, group_size, kind, flags, beta, p0, p1, kl_given, grad_scale, reserved);
    same!(LinearRowsParams: src, dst, index, status, n_rows, width, src_stride, dst_stride, bound);
    same!(LinearBiasParams: bias, logits, n_rows, vocab);
    same!(VocabShardFwdParams: logits, targets, partials, status, n_rows, row_stride, shard_vocab, vocab_start, vocab, ignore_index, inv_temperature, reserved);
    same!(VocabFinalizeParams: partials, targets, logp, lse, entropy, status, n_rows, n_shards, vocab, ignore_index, stats, inv_temperature, reserved);
    same!(VocabShardBwdParams: rows, vocab_start, vocab);
    assert_eq!(g::PREFK_STATUS_BAD_PAIR, STATUS_BAD_PAIR);
}
