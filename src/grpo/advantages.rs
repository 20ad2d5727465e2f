//! Group-relative advantages, as TRL's `GRPOTrainer` computes them, on the host.
//!
//! The host is the right place: rewards are one number per response (B floats, produced by reward
//! functions that run on the host or in a reward model whose output the trainer already
//! gathers), so a kernel launch would cost more than the arithmetic. Accumulation is f64.
//!
//! ```text
//! r_i   = Σ_f w_f r_{i,f}    over the reward functions, NaN terms skipped (torch.nansum); a
//!                            response whose every reward is NaN is unscorable (r_i = NaN)
//! A_i   = r_i − nanmean_{g(i)} r
//! A_i  /= nanstd + 1e-4      unbiased (Bessel) over the scorable responses of the group (`Group`)
//!                            or of the whole batch (`Batch`; the mean stays per group); no
//!                            division for `None` (Dr. GRPO)
//! A_i   = 0 where NaN        (unscorable responses, groups with one scorable response: TRL's
//!                            nan_to_num)
//! ```
//! TRL's `multi_objective_aggregation = "normalize_then_sum"` is not provided (combine per
//! function yourself, then call this with one column and `ScaleRewards::None` + batch scaling).
use crate::error::{ensure, invalid, Result};
use crate::numeric::pairwise_sum;

/// How advantages are scaled (TRL `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRewards {
    /// Divide by the group's unbiased std + 1e-4 (TRL's default, `True`).
    Group,
    /// Divide by the batch's unbiased std + 1e-4.
    Batch,
    /// No division (`False`; Dr. GRPO).
    None,
}

/// Which responses share a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Groups<'a> {
    /// `G` consecutive responses per prompt (TRL's `num_generations` layout).
    Uniform(usize),
    /// An explicit group id per response (any order, any sizes).
    Ids(&'a [i32]),
}

/// The std's additive guard (TRL `std + 1e-4`).
pub const ADVANTAGE_STD_EPS: f64 = 1e-4;

/// Advantages of `n` responses from `rewards` (`[n, n_funcs]` row-major, one column per reward
/// function) weighted by `func_weights` (`[n_funcs]`; TRL `reward_weights`, default all 1).
///
/// Errors: empty input, lengths that disagree, a uniform group size that does not divide `n`,
/// groups of one response under `Group` scaling (the unbiased std of one value is undefined),
/// a batch of one under `Batch`, non-finite weights, +-inf rewards.
pub fn group_advantages(
    rewards: &[f32],
    func_weights: &[f32],
    groups: Groups<'_>,
    scale: ScaleRewards,
) -> Result<Vec<f32>> {
    let n_funcs = func_weights.len();
    ensure(n_funcs >= 1, "func_weights", || "need at least one reward function weight".into())?;
    ensure(rewards.len() % n_funcs == 0 && !rewards.is_empty(), "rewards", || {
        format!("need [n, {n_funcs}] rewards (n >= 1), got {} values", rewards.len())
    })?;
    for &w in func_weights {
        ensure(w.is_finite(), "func_weights", || format!("must be finite, got {w}"))?;
    }
    for &r in rewards {
        ensure(!r.is_infinite(), "rewards", || {
            format!("rewards must be finite or NaN (unscorable), got {r}")
        })?;
    }
    let n = rewards.len() / n_funcs;
    let combined: Vec<f64> = (0..n)
        .map(|i| {
            let terms: Vec<f64> = (0..n_funcs)
                .filter(|&f| !rewards[i * n_funcs + f].is_nan())
                .map(|f| rewards[i * n_funcs + f] as f64 * func_weights[f] as f64)
                .collect();
            if terms.is_empty() {
                f64::NAN
            } else {
                pairwise_sum(&terms)
            }
        })
        .collect();
    let group_of: Vec<usize> = match groups {
        Groups::Uniform(g) => {
            ensure(g >= 1 && n % g == 0, "groups", || {
                format!("group size {g} does not divide the {n} responses")
            })?;
            (0..n).map(|i| i / g).collect()
        }
        Groups::Ids(ids) => {
            ensure(ids.len() == n, "groups", || format!("need {n} group ids, got {}", ids.len()))?;
            let mut distinct: Vec<i32> = ids.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            ids.iter().map(|id| distinct.binary_search(id).unwrap_or(0)).collect()
        }
    };
    let n_groups = group_of.iter().copied().max().map_or(0, |g| g + 1);
    let members: Vec<Vec<usize>> = {
        let mut m = vec![Vec::new(); n_groups];
        for (i, &g) in group_of.iter().enumerate() {
            m[g].push(i);
        }
        m
    };
    // nanmean / nanstd (Bessel; NaN below two scorable values), as TRL's `nanstd`.
    let mean_std = |idx: &[usize]| -> (f64, f64) {
        let xs: Vec<f64> = idx.iter().map(|&i| combined[i]).filter(|x| !x.is_nan()).collect();
        let k = xs.len() as f64;
        let mean = pairwise_sum(&xs) / k;
        let ss = pairwise_sum(&xs.iter().map(|x| (x - mean).powi(2)).collect::<Vec<_>>());
        (mean, if xs.len() > 1 { (ss / (k - 1.0)).sqrt() } else { f64::NAN })
    };
    let stats: Vec<(f64, f64)> = members.iter().map(|m| mean_std(m)).collect();
    let batch_std = mean_std(&(0..n).collect::<Vec<_>>()).1;
    match scale {
        ScaleRewards::Group => {
            if let Some(g) = members.iter().position(|m| m.len() < 2) {
                return Err(invalid(
                    "scale_rewards",
                    format!(
                        "group {g} has one response: its std is undefined; use ScaleRewards::Batch or None"
                    ),
                ));
            }
        }
        ScaleRewards::Batch => ensure(n >= 2, "scale_rewards", || {
            "batch scaling needs at least two responses (the std of one is undefined)".into()
        })?,
        ScaleRewards::None => {}
    }
    Ok((0..n)
        .map(|i| {
            let (mean, gstd) = stats[group_of[i]];
            let a = combined[i] - mean;
            let a = match scale {
                ScaleRewards::Group => a / (gstd + ADVANTAGE_STD_EPS),
                ScaleRewards::Batch => a / (batch_std + ADVANTAGE_STD_EPS),
                ScaleRewards::None => a,
            };
            if a.is_nan() {
                0.0
            } else {
                a as f32
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_group_scaling() {
        // Group [1, 2, 3]: mean 2, unbiased std 1 -> A = (-1, 0, 1) / 1.0001.
        let a = group_advantages(
            &[1.0, 2.0, 3.0, 5.0, 5.0, 5.0],
            &[1.0],
            Groups::Uniform(3),
            ScaleRewards::Group,
        )
        .unwrap();
        let e = 1.0 / (1.0 + 1e-4);
        for (x, y) in a.iter().zip([-e, 0.0, e, 0.0, 0.0, 0.0]) {
            assert!((*x as f64 - y).abs() < 1e-7, "{a:?}");
        }
        // Unscaled: plain centring; ids in any order give the same as the uniform layout.
        let n =
            group_advantages(&[1.0, 5.0, 3.0, 5.0], &[1.0], Groups::Ids(&[7, 2, 7, 2]), ScaleRewards::None)
                .unwrap();
        assert_eq!(n, vec![-1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn batch_scaling_weights_and_nan() {
        // Two functions weighted (1, 0.5); a NaN term is skipped (nansum); an all-NaN row is
        // unscorable: left out of the mean and std, advantage 0; so is a lone scorable row.
        let r = [1.0, 2.0, f32::NAN, 4.0, f32::NAN, f32::NAN, 3.0, 0.0, 1.0, 1.0, 5.0, 1.0];
        let a = group_advantages(&r, &[1.0, 0.5], Groups::Uniform(2), ScaleRewards::Batch).unwrap();
        let scorable = [2.0f64, 2.0, 3.0, 1.5, 5.5];
        let mean = scorable.iter().sum::<f64>() / 5.0;
        let std = (scorable.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
        let expect = [0.0, 0.0, 0.0, 0.0, -2.0, 2.0].map(|x: f64| x / (std + 1e-4));
        for (x, y) in a.iter().zip(expect) {
            assert!((*x as f64 - y).abs() < 1e-6, "{a:?} vs {expect:?}");
        }
        // Group scaling of the same: the group with one scorable response gets 0.
        let g = group_advantages(&r, &[1.0, 0.5], Groups::Uniform(2), ScaleRewards::Group).unwrap();
        assert_eq!(&g[2..4], &[0.0, 0.0]);
        assert!((g[4] as f64 + 2.0 / ((8.0f64).sqrt() + 1e-4)).abs() < 1e-6, "{g:?}");
    }

    #[test]
    fn bad_input_is_refused() {
        let e = |r: Result<Vec<f32>>| r.unwrap_err().to_string();
        assert!(e(group_advantages(&[1.0; 5], &[1.0], Groups::Uniform(2), ScaleRewards::Group))
            .contains("divide"));
        assert!(e(group_advantages(&[1.0; 3], &[1.0], Groups::Uniform(1), ScaleRewards::Group))
            .contains("one response"));
        assert!(e(group_advantages(&[1.0], &[1.0], Groups::Uniform(1), ScaleRewards::Batch)).contains("two"));
        assert!(e(group_advantages(&[], &[1.0], Groups::Uniform(1), ScaleRewards::None)).contains("rewards"));
        assert!(e(group_advantages(&[f32::INFINITY, 1.0], &[1.0], Groups::Uniform(2), ScaleRewards::None))
            .contains("finite"));
        assert!(e(group_advantages(&[1.0, 1.0], &[f32::NAN], Groups::Uniform(2), ScaleRewards::None))
            .contains("finite"));
        assert!(
            e(group_advantages(&[1.0, 1.0], &[1.0], Groups::Ids(&[0]), ScaleRewards::None)).contains("ids")
        );
        // G = 1 without scaling is fine (advantage 0).
        assert_eq!(
            group_advantages(&[3.0], &[1.0], Groups::Uniform(1), ScaleRewards::None).unwrap(),
            vec![0.0]
        );
    }
}
