"""Every default the package says it mirrors from TRL equals the installed TRL's own (read from the
config dataclasses, not restated here), so a TRL upgrade that moves a default fails this test
instead of silently changing what a user who relies on "TRL's defaults" gets."""
import dataclasses
import inspect

import pytest

from conftest import import_or_skip

import pref_kernels as pk

trl = import_or_skip("trl")


def trl_defaults(config_cls):
    out = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def our_defaults(fn):
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not inspect._empty}


# (TRL config, our function, the parameters that mirror the config's fields of the same name)
MIRRORED = [
    ("GRPOConfig", pk.grpo_loss,
     ["loss_type", "beta", "epsilon", "epsilon_high", "delta", "importance_sampling_level", "max_completion_length",
      "top_entropy_quantile", "entropy_coef", "use_bias_correction_kl", "sapo_temperature_pos",
      "sapo_temperature_neg", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg",
      "off_policy_mask_threshold", "steps_per_generation"]),
    ("DPOConfig", pk.dpo_loss,
     ["loss_type", "beta", "label_smoothing", "discopop_tau", "f_divergence_type", "f_alpha_divergence_coef",
      "ld_alpha", "use_weighting", "loss_weights"]),
    ("DPOConfig", pk.linear_dpo_loss,
     ["loss_type", "beta", "label_smoothing", "discopop_tau", "f_divergence_type", "f_alpha_divergence_coef",
      "loss_weights"]),
    ("KTOConfig", pk.kto_loss, ["loss_type", "beta", "desirable_weight", "undesirable_weight"]),
]


@pytest.mark.parametrize("config,fn,names", MIRRORED, ids=lambda x: getattr(x, "__name__", str(x)))
def test_defaults_equal_the_installed_trls(config, fn, names):
    theirs, ours = trl_defaults(getattr(trl, config)), our_defaults(fn)
    for name in names:
        assert name in theirs, f"TRL's {config} has no field {name!r}: update the mirror"
        assert name in ours, f"{fn.__name__} has no parameter {name!r}"
        want = theirs[name]
        got = ours[name]
        if isinstance(want, list) and isinstance(got, str):
            got = [got]  # TRL's loss_type lists; ours take a name or a list
        assert got == want, f"{fn.__name__}({name}={got!r}) but TRL {trl.__version__}'s {config}.{name} = {want!r}"


def test_trl_version_is_the_one_the_readme_names():
    assert trl.__version__ == "1.16.0", "the README, the tests and the defaults name TRL 1.16.0"
