//! Every loss configuration the crate offers, shared by the CPU and GPU loss tests.
use pref_kernels::preference_loss::{BarrierDenominator, FDivergence, Loss, LossConfig};
use pref_kernels::seq_reduce::ReduceMode;

/// Every loss configuration the crate offers, with non-default hyperparameters where they matter.
pub fn all_configs() -> Vec<(&'static str, LossConfig)> {
    let s = LossConfig::single;
    let mut v = vec![
        ("sigmoid", s(Loss::Sigmoid { beta: 0.3, label_smoothing: 0.0 })),
        ("cdpo", s(Loss::Sigmoid { beta: 0.3, label_smoothing: 0.2 })),
        ("robust", s(Loss::Robust { beta: 0.3, label_smoothing: 0.1 })),
        ("hinge", s(Loss::Hinge { beta: 0.3 })),
        ("ipo", s(Loss::Ipo { beta: 0.3 })),
        ("exo_pair", s(Loss::ExoPair { beta: 0.3, epsilon: 1e-3 })),
        ("nca_pair", s(Loss::NcaPair { beta: 0.3 })),
        ("bco_pair", s(Loss::BcoPair { beta: 0.3 })),
        ("sppo_hard", s(Loss::SppoHard { beta: 0.3 })),
        ("apo_zero", s(Loss::ApoZero { beta: 0.3 })),
        ("apo_down", s(Loss::ApoDown { beta: 0.3 })),
        ("discopop", s(Loss::DiscoPop { beta: 0.3, tau: 0.05 })),
        ("sigmoid_norm", s(Loss::SigmoidNorm { beta: 0.3 })),
        ("aot", s(Loss::Aot { beta: 0.3, label_smoothing: 0.0 })),
        ("aot_smoothed", s(Loss::Aot { beta: 0.3, label_smoothing: 0.2 })),
        ("aot_unpaired", s(Loss::AotUnpaired { beta: 0.3, label_smoothing: 0.1 })),
        (
            "aot_mix_wsum",
            LossConfig {
                terms: vec![
                    (Loss::Aot { beta: 0.2, label_smoothing: 0.0 }, 0.5),
                    (Loss::AotUnpaired { beta: 0.4, label_smoothing: 0.0 }, 0.5),
                    (Loss::Nll, 0.3),
                ],
                aggregation: ReduceMode::WeightedSum,
                ..LossConfig::dpo(0.2)
            },
        ),
        ("simpo", s(Loss::simpo())),
        ("simpo_hinge", s(Loss::SimPo { beta: 2.0, gamma: 0.5, label_smoothing: 0.0, hinge: true })),
        ("cpo", LossConfig::cpo(0.2, 1.0)),
        ("orpo", LossConfig::orpo(0.1)),
        ("tgdpo", s(Loss::tgdpo())),
        ("tabpo", LossConfig::tabpo()),
        (
            "tabpo_count_den",
            s(Loss::TabPo {
                beta: 0.5,
                tau: 0.66,
                lambda: 0.5,
                barrier: BarrierDenominator::GatedCountClamp1,
                seq_norm: ReduceMode::WeightedMean,
            }),
        ),
        (
            "tabpo_eps_den_wsum",
            s(Loss::TabPo {
                beta: 0.5,
                tau: 0.3,
                lambda: 0.7,
                barrier: BarrierDenominator::GatedWeightMassEps,
                seq_norm: ReduceMode::WeightedSum,
            }),
        ),
        ("tis_dpo", LossConfig::token_weighted_dpo(0.2)),
        ("wmean_dpo", LossConfig { aggregation: ReduceMode::WeightedMean, ..LossConfig::dpo(0.2) }),
        (
            "mpo_mix",
            LossConfig {
                terms: vec![
                    (Loss::Sigmoid { beta: 0.2, label_smoothing: 0.0 }, 0.8),
                    (Loss::BcoPair { beta: 0.2 }, 0.2),
                    (Loss::Nll, 1.0),
                ],
                grad_scale: 0.5,
                ..LossConfig::dpo(0.2)
            },
        ),
    ];
    for (name, div) in [
        ("fdpo_forward_kl", FDivergence::ForwardKl),
        ("fdpo_js", FDivergence::JensenShannon),
        ("fdpo_alpha", FDivergence::Alpha { alpha: 0.5 }),
    ] {
        v.push((name, LossConfig { divergence: div, ..LossConfig::dpo(0.3) }));
        v.push((name, LossConfig { divergence: div, ..s(Loss::Ipo { beta: 0.3 }) }));
        // exo_pair and discopop transform the margin. nca_pair, bco_pair, sppo_hard, apo_zero and
        // apo_down refuse a divergence other than reverse KL, as TRL 1.16.
        v.push((name, LossConfig { divergence: div, ..s(Loss::ExoPair { beta: 0.3, epsilon: 1e-3 }) }));
        v.push((name, LossConfig { divergence: div, ..s(Loss::DiscoPop { beta: 0.3, tau: 0.05 }) }));
        v.push((name, LossConfig { divergence: div, ..s(Loss::SigmoidNorm { beta: 0.3 }) }));
    }
    v
}
