"""TRL drop-in: `use_pref_kernels(trainer)` makes a `trl.DPOTrainer` compute its preference loss (every
served `loss_type`, weighted lists such as MPO's, the f-divergences) and its reward/log-prob metrics
with pref-kernels' fused loss, in one kernel call per step instead of TRL's chain of small ops.

What stays TRL's: the model forward through TRL's own fused LM head (`fused_lm_head=True`, which
returns per-token log-probs without logits), the reference log-probs (precomputed or from the
reference model / PEFT adapter, through `DPOTrainer.compute_ref_log_probs`), and the metrics read
from the model outputs (entropy, token counts, mean logits, token accuracy).

Every TRL 1.16 `loss_type` is served, with WPO weighting (`use_weighting`: the weights come from
the fused head's `log_sum_sq_probs`, as TRL's) and LD-DPO (`ld_alpha`: the policy's tokens past the
shorter side weigh `ld_alpha`; TRL's reference sums are weighted the same way). Refused, with the
reason, at patch time: `ipo` with an f-divergence other than reverse KL (TRL's shifted scores do
not cancel in IPO's length-normalized difference, so the crate's scores would give a different
loss).

    from trl import DPOTrainer
    from pref_kernels.trl import use_pref_kernels
    trainer = use_pref_kernels(DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok))
    trainer.train()
"""
import types

import torch

from . import METRIC_NAMES, TRL_LOSS_TYPES, dpo_loss

_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
_REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                   "logps/rejected")


def unsupported_reason(trainer):
    """Why `trainer` cannot use pref-kernels' loss (None when it can)."""
    missing = [a for a in ("_compute_loss", "compute_ref_log_probs", "loss_types", "loss_weights", "_metrics")
               if not hasattr(trainer, a)]
    if missing:
        return f"this TRL version's DPOTrainer lacks {', '.join(missing)} (tested with TRL 1.16)"
    for t in trainer.loss_types:
        if t not in TRL_LOSS_TYPES:
            return f"loss_type {t!r} is not served (supported: {', '.join(TRL_LOSS_TYPES)})"
    if "ipo" in trainer.loss_types and trainer.f_divergence_type != "reverse_kl":
        return "ipo with an f-divergence other than reverse_kl (TRL's score offsets do not cancel there)"
    return None


def use_pref_kernels(trainer):
    """Patches `trainer` (a trl.DPOTrainer) in place to compute its loss with pref-kernels; returns it.
    Raises NotImplementedError, with the reason, for configurations pref-kernels does not serve."""
    reason = unsupported_reason(trainer)
    if reason is not None:
        raise NotImplementedError(f"pref_kernels cannot serve this DPOTrainer: {reason}")
    trainer._compute_loss = types.MethodType(_compute_loss, trainer)
    trainer.pref_kernels_enabled = True
    return trainer


def _log_model_output_metrics(self, mode, outputs, inputs, mask):
    """TRL's metrics read from the model outputs, each gathered across processes."""
    acc = self.accelerator
    m = self._metrics[mode]
    seq_len = mask.size(1)

    def mean_over(values, where):
        total = acc.gather_for_metrics((values * where).sum()).sum()
        count = acc.gather_for_metrics(where.sum()).sum()
        return (total / count).item() if count > 0 else 0.0

    if outputs.entropy is not None:
        m["entropy"].append(mean_over(outputs.entropy[:, -seq_len:].detach(), mask))
    if mode == "train":
        self._total_train_tokens += acc.gather_for_metrics(inputs["attention_mask"].sum()).sum().item() // getattr(
            self, "_tp_size", 1)
    m["num_tokens"] = [self._total_train_tokens]
    chosen_mask, rejected_mask = mask.chunk(2, dim=0)
    if outputs.mean_logits is not None:
        chosen_logits, rejected_logits = outputs.mean_logits[:, -seq_len:].detach().chunk(2, dim=0)
        m["logits/chosen"].append(mean_over(chosen_logits, chosen_mask))
        m["logits/rejected"].append(mean_over(rejected_logits, rejected_mask))
    if outputs.is_top1 is not None:
        chosen_top1, _ = outputs.is_top1[:, -seq_len:].chunk(2, dim=0)
        m["mean_token_accuracy"].append(mean_over(chosen_top1.to(chosen_mask.dtype), chosen_mask))


def _compute_loss(self, model, inputs, return_outputs):
    mode = "train" if self.model.training else "eval"
    model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
    model_kwargs["use_cache"] = False
    if self.aux_loss_enabled:
        model_kwargs["output_router_logits"] = True
    completion_mask = inputs["completion_mask"]
    mask = completion_mask[..., 1:]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
    seq_len = mask.size(1)
    per_token_logps = outputs.log_probs[:, -seq_len:]

    if self.precompute_ref_logps:
        ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
    else:
        ref_model = self.ref_model if self.ref_model is not None else self.model
        ref_chosen, ref_rejected = self.compute_ref_log_probs(ref_model, inputs)

    n_seqs = per_token_logps.size(0)
    log_sum_sq = None
    if self.use_weighting:
        log_sum_sq = outputs.log_sum_sq_probs[:, -seq_len:].float().reshape(-1).contiguous()
    loss, metrics = dpo_loss(
        per_token_logps.float().reshape(-1).contiguous(), mask.reshape(-1).to(torch.uint8).contiguous(),
        ref_seq=torch.cat([ref_chosen, ref_rejected]).float().contiguous(), n_seqs=n_seqs, seq_len=seq_len,
        loss_type=list(self.loss_types), loss_weights=list(self.loss_weights), beta=self.beta,
        label_smoothing=self.label_smoothing, discopop_tau=self.args.discopop_tau,
        f_divergence_type=self.f_divergence_type, f_alpha_divergence_coef=self.f_alpha_divergence_coef,
        ld_alpha=self.ld_alpha, use_weighting=self.use_weighting, log_sum_sq=log_sum_sq)

    if self.aux_loss_enabled:
        loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())
    _log_model_output_metrics(self, mode, outputs, inputs, mask)
    # The fused loss's metrics are batch means on this process; the mean over equal-size processes is the
    # batch mean, as TRL's gathered means are.
    values = metrics.detach()
    for name in _REWARD_METRICS:
        v = values[METRIC_NAMES.index(name)]
        self._metrics[mode][name].append(self.accelerator.gather_for_metrics(v[None]).mean().item())

    if return_outputs:
        with torch.no_grad():
            outputs = model(**model_kwargs)
        return loss, outputs
    return loss
