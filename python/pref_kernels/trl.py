"""TRL drop-in: `use_pref_kernels(trainer)` puts pref-kernels where a TRL 1.16 trainer spends its time.

- `GRPOTrainer`: the policy, old-policy and reference log-probs and entropies come from pref-kernels'
  fused LM head (hidden states + LM-head weight, no `[N, V]` logits, chunks of the completion rows
  only), and the GRPO-family loss (every TRL 1.16 `loss_type`, with its clipping, KL, off-policy mask,
  entropy mask and bonus, vLLM importance weights and normalizers) with its metrics and every token's
  gradient comes from one fused kernel call; TRL's metric names are logged. The training forward's
  head and loss are one call (`linear_grpo_loss`: three GEMMs per completion token, the loss's
  gradients computed with the log-probs) except with the top-entropy mask or VESPO's vLLM weights,
  which take the fused head's forward and backward around the fused loss (four GEMMs).
- `shared_prompts=True` (GRPO / RLOO): those forwards run prompt-once (`pref_kernels.prompt_once`):
  each group's prompt through the model once, completions attending to it through the shared-prefix
  attention kernel, packed without padding.
- `RLOOTrainer`: its log-probs and entropies through the fused head (its loss is a handful of `[B]`
  operations on sequence sums and stays TRL's).
- `DPOTrainer`: the policy and reference log-probs through pref-kernels' fused head, with every
  field DPO's metrics and WPO ask it for (entropy, mean logit, `is_top1`, log sum p^2) from the same
  pass; then the preference loss (every served `loss_type`, weighted lists such as MPO's, the
  f-divergences, WPO, LD-DPO) and its reward/log-prob metrics in one kernel call.

What is not served is refused, with the reason, when `use_pref_kernels` is called: final-logit
soft-capping (Gemma 2), a non-positive logit scale, adaptive entropy control, for DPO `ipo` with an
f-divergence other than reverse KL.

    from trl import GRPOTrainer
    from pref_kernels.trl import use_pref_kernels
    trainer = use_pref_kernels(GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds))
    trainer.train()
"""
import contextlib
import math
import threading
import types

import torch

from . import GRPO_LOSS_TYPES, GRPO_METRIC_NAMES, METRIC_NAMES, TRL_LOSS_TYPES, dpo_loss, grpo_loss, \
    linear_grpo_loss, linear_token_stats

_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
_REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                   "logps/rejected")


def _trainer_kind(trainer):
    for cls in type(trainer).__mro__:
        if cls.__module__.startswith("trl.") and cls.__name__ in ("DPOTrainer", "GRPOTrainer", "RLOOTrainer"):
            return cls.__name__
    return None


def _model_config(trainer):
    model = trainer.model
    model = getattr(model, "module", model)  # DDP
    cfg = getattr(model, "config", None)
    return cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg


# ---- the fused LM head inside TRL ------------------------------------------------------------------

#: `FusedCausalLMOutput` fields pref-kernels' fused head computes (every one TRL 1.16 has).
HEAD_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def head_refusal(final_logit_softcapping=None, logit_scale=1.0, outputs=("log_probs",)):
    """Why pref-kernels' fused head cannot serve a TRL fused-head call with these settings (None when
    it can)."""
    if final_logit_softcapping is not None:
        return (f"final-logit soft-capping ({final_logit_softcapping}) is not implemented by pref-kernels' fused "
                "head (its gradient needs the capped logits)")
    if not (isinstance(logit_scale, (int, float)) and math.isfinite(logit_scale) and logit_scale > 0):
        return f"logit scale {logit_scale!r}: pref-kernels folds it into the temperature and needs it finite and > 0"
    missing = [o for o in outputs if o not in HEAD_OUTPUTS]
    if missing:
        return f"the fused head cannot produce {', '.join(missing)} (it serves {', '.join(HEAD_OUTPUTS)})"
    return None


class FusedHead:
    """Drop-in for TRL 1.16's `ChunkedLogProbFunction` (same `apply` signature and outputs): the
    per-token log-probs and whichever of entropy, log sum p^2, mean logit and `is_top1` are asked
    for, of `hidden @ weight.T + bias`, through pref-kernels' fused head in one pass. Logits are
    scaled by `logit_scale` and divided by `temperature` (folded into one temperature); computed in
    the autocast dtype when autocast is on, else in `hidden`'s dtype, as TRL's; TRL's `chunk_size`
    is replaced by pref-kernels' workspace budget. `is_top1` compares the logits before the scaling
    (TRL compares them after it: the same answer unless the division rounds two logits together)."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("log_probs",)):
        del chunk_size
        reason = head_refusal(final_logit_softcapping, logit_scale, outputs)
        if reason is not None:
            raise NotImplementedError(f"pref_kernels: {reason}")
        dev = hidden.device
        dtype = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else hidden.dtype
        h = hidden.to(dtype).contiguous()
        w = weight.to(dtype).contiguous()
        b = None if bias is None else bias.float().contiguous()
        step = _PENDING_GRPO_STEP.step
        if step is not None:
            _PENDING_GRPO_STEP.step = None  # one forward per step
            if step.declines(h, w) is None:
                logp, entropy = step.run(h, w, b, targets.contiguous(), float(temperature) / logit_scale)
                return logp, entropy, None, None, None
        s = linear_token_stats(h, w, targets.contiguous(), bias=b, temperature=float(temperature) / logit_scale,
                               entropy="entropy" in outputs, log_sum_sq="log_sum_sq_probs" in outputs,
                               mean_logits="mean_logits" in outputs, is_top1="is_top1" in outputs,
                               skip_ignored_rows=True)
        return s.logp, s.entropy, s.log_sum_sq, s.mean_logits, s.is_top1


class _GrpoStep:
    """The GRPO step the next fused-head call runs (`_grpo_compute_loss`): TRL's [B, C] batch tensors
    and loss settings; `run` takes the head's compact rows (TRL projects the labelled positions only:
    the completion tokens, row-major, exactly where `completion_mask` is set) and returns their
    detached log-probs and entropies for TRL's forward to scatter, keeping the loss and metrics."""

    def __init__(self, completion_mask, advantages, per_token, loss_mask, kwargs):
        self.completion_mask, self.advantages = completion_mask, advantages
        self.per_token, self.loss_mask, self.kwargs = per_token, loss_mask, kwargs
        self.loss = self.metrics = None

    def declines(self, hidden, weight):
        """Why the fused-head call should run the plain head instead (None: run the step). The step
        computes its gradients in the forward: wasted without autograd (evaluation, a frozen head
        and backbone), and `d_hidden` would be rounded to fp16 before a GradScaler's factor reaches
        it (the four-GEMM path's backward gets the scaled cotangent)."""
        if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
            return "no gradient wanted"
        if hidden.dtype == torch.float16:
            return "fp16: gradients computed before loss scaling would underflow"
        return None

    def run(self, hidden, weight, bias, targets, temperature):
        sel = self.completion_mask != 0
        # The drop-in's fused_head() makes TRL project compact rows (its `_use_triton` is true there):
        # the completion positions, row-major, where completion_mask is set.
        if hidden.shape[0] != int(sel.sum()):
            raise RuntimeError(f"pref_kernels: the fused head got {hidden.shape[0]} rows, the completion mask has "
                               f"{int(sel.sum())}")
        lengths = sel.sum(1).to(torch.int32)
        cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0, dtype=torch.int32)])
        # One nonzero for every per-token input (boolean indexing would synchronize once per tensor).
        idx = sel.reshape(-1).nonzero().squeeze(1)
        pick = lambda v: None if v is None else v.reshape(-1).index_select(0, idx)  # noqa: E731
        rows = {k: pick(v) for k, v in self.per_token.items()}
        mask = None if self.loss_mask is None else (pick(self.loss_mask) != 0)
        self.loss, self.metrics, logp, entropy = linear_grpo_loss(
            hidden, weight, targets, self.advantages.float().contiguous(), mask, rows["old"], rows["ref"], bias=bias,
            cu_seqlens=cu, vllm_is_weights=rows["is_weights"], sampling_logp=rows["sampling"], compute_entropy=True,
            temperature=temperature, **self.kwargs)
        return logp, entropy


class _PendingStep(threading.local):
    """The GRPO step `FusedHead.apply` runs instead of returning log-probs only (set around one
    policy forward by `_grpo_compute_loss`, per thread)."""
    step = None


_PENDING_GRPO_STEP = _PendingStep()


@contextlib.contextmanager
def fused_head():
    """Within this context, TRL's fused LM head (`add_fused_lm_head`, `fused_lm_head=True`) runs on
    pref-kernels: TRL's label shifting, masking, PEFT/FSDP handling and output assembly stay, the
    chunked projection and its backward are pref-kernels'. Only rows with a label are projected, on
    every device (TRL scores every row where Triton is unavailable)."""
    import trl.trainer.utils as tu

    saved = (tu._ChunkedLogProbFunction, tu._use_triton)
    tu._ChunkedLogProbFunction, tu._use_triton = FusedHead, (lambda device: True)
    try:
        yield
    finally:
        tu._ChunkedLogProbFunction, tu._use_triton = saved


def _with_fused_head(method):
    def wrapped(*args, **kwargs):
        with fused_head():
            return method(*args, **kwargs)
    return wrapped


# ---- patching ----------------------------------------------------------------------------------------

def unsupported_reason(trainer):
    """Why pref-kernels cannot serve `trainer` (None when it can)."""
    kind = _trainer_kind(trainer)
    if kind is None:
        return f"{type(trainer).__name__} is not a TRL DPOTrainer, GRPOTrainer or RLOOTrainer"
    if kind == "DPOTrainer":
        return _dpo_unsupported_reason(trainer)
    needed = ("_compute_loss", "_get_per_token_logps_and_entropies", "_metrics")
    missing = [a for a in needed + (("loss_type",) if kind == "GRPOTrainer" else ()) if not hasattr(trainer, a)]
    if missing:
        return f"this TRL version's {kind} lacks {', '.join(missing)} (tested with TRL 1.16)"
    cfg = _model_config(trainer)
    reason = head_refusal(getattr(cfg, "final_logit_softcapping", None), _logit_scale(cfg), ("log_probs", "entropy"))
    if reason is not None:
        return reason
    if kind == "GRPOTrainer":
        if trainer.loss_type not in GRPO_LOSS_TYPES:
            return f"loss_type {trainer.loss_type!r} is not served (supported: {', '.join(GRPO_LOSS_TYPES)})"
        if getattr(trainer, "use_adaptive_entropy", False):
            return "adaptive entropy control (entropy_target) is not served yet: its controller reads the entropy " \
                   "mask the fused loss computes internally"
        if trainer.top_entropy_quantile < 1.0 and trainer.accelerator.num_processes > 1:
            return "top_entropy_quantile < 1 over several processes: TRL's quantile is over every process's " \
                   "tokens, the fused loss's over this process's"
        if getattr(trainer, "importance_sampling_level", "token") not in ("token", "sequence"):
            return f"importance_sampling_level {trainer.importance_sampling_level!r}"
    return None


def _logit_scale(cfg):
    """The logit multiplier TRL 1.16's `add_fused_lm_head` reads from a text config."""
    if cfg is None:
        return 1.0
    scale = getattr(cfg, "logit_scale", None)
    if scale is None:
        scale = getattr(cfg, "output_multiplier", None)
    if scale is None:
        scale = getattr(cfg, "lm_head_multiplier", None)
    if scale is None and getattr(cfg, "logits_scaling", None) is not None:
        scale = cfg.logits_scaling if cfg.model_type == "hyperclovax" else 1 / cfg.logits_scaling
    return 1.0 if scale is None else scale


def use_pref_kernels(trainer, shared_prompts: bool = False):
    """Patches `trainer` (a trl DPOTrainer, GRPOTrainer or RLOOTrainer) in place to run on pref-kernels
    (see the module's docstring for what each gets); returns it. Raises NotImplementedError, with the
    reason, for configurations pref-kernels does not serve.

    `shared_prompts` (GRPO / RLOO): every log-prob forward runs prompt-once (`pref_kernels.prompt_once`):
    each group's prompt goes through the model once, its completions attend to it through the
    shared-prefix attention kernel, packed without padding, and only completion positions reach the
    fused head. Position ids continue from the prompt's real tokens (those generation used; TRL's own
    forward shifts them by the left padding, so the two agree when a batch's prompts need none)."""
    reason = unsupported_reason(trainer)
    if reason is None and shared_prompts:
        reason = _shared_prompts_refusal(trainer)
    if reason is not None:
        raise NotImplementedError(f"pref_kernels cannot serve this {type(trainer).__name__}: {reason}")
    kind = _trainer_kind(trainer)
    if kind == "DPOTrainer":
        trainer._compute_loss = _with_fused_head(types.MethodType(_compute_loss, trainer))
        trainer.compute_ref_log_probs = _with_fused_head(trainer.compute_ref_log_probs)
    else:
        if shared_prompts:
            trainer._get_per_token_logps_and_entropies = types.MethodType(_prompt_once_logps_and_entropies, trainer)
            trainer.pref_kernels_prompt_once = True
        else:
            trainer._get_per_token_logps_and_entropies = _with_fused_head(trainer._get_per_token_logps_and_entropies)
        if kind == "GRPOTrainer":
            trainer._compute_loss = types.MethodType(_grpo_compute_loss, trainer)
    trainer.pref_kernels_enabled = True
    return trainer


def _shared_prompts_refusal(trainer):
    kind = _trainer_kind(trainer)
    if kind not in ("GRPOTrainer", "RLOOTrainer"):
        return f"shared_prompts is a GRPO / RLOO option, not a {kind} one"
    if trainer.accelerator.num_processes > 1:
        return "shared_prompts over several processes: the prompt-once forward calls the model's decoder " \
               "directly, which a DDP wrapper's forward would not see (not served yet)"
    cfg = _model_config(trainer)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if head_dim not in (64, 128):
        return f"shared_prompts needs attention head dim 64 or 128 (the kernel's), this model has {head_dim}"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) and \
            getattr(cfg, "layer_types", None) and any(t != "full_attention" for t in cfg.layer_types):
        return "shared_prompts with sliding-window layers (the kernel attends to the whole prompt)"
    if getattr(trainer, "aux_loss_enabled", False):
        return "shared_prompts with a MoE router aux loss (the decoder-only forward does not return it)"
    return None


def _prompt_once_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                     compute_entropy=False, compute_aux_loss=False, **multimodal):
    """TRL 1.16's `_get_per_token_logps_and_entropies` (same signature and outputs: [B, C] log-probs
    and entropies of the last `logits_to_keep` tokens) through the prompt-once forward."""
    from .prompt_once import prompt_once_batch, prompt_once_logprobs

    del batch_size  # the packed row has no padding to chunk away
    given = [k for k, v in multimodal.items() if v is not None]
    if given or compute_aux_loss:
        raise NotImplementedError(f"pref_kernels: shared_prompts does not serve {given or ['the MoE aux loss']}")
    c = logits_to_keep
    batch = prompt_once_batch(input_ids[:, :-c], attention_mask[:, :-c], input_ids[:, -c:], attention_mask[:, -c:])
    with self.accelerator.autocast():
        logps, entropies = prompt_once_logprobs(getattr(model, "module", model), batch, temperature=self.temperature,
                                                compute_entropy=compute_entropy)
    return logps, entropies, None


def _dpo_unsupported_reason(trainer):
    missing = [a for a in ("_compute_loss", "compute_ref_log_probs", "loss_types", "loss_weights", "_metrics")
               if not hasattr(trainer, a)]
    if missing:
        return f"this TRL version's DPOTrainer lacks {', '.join(missing)} (tested with TRL 1.16)"
    for t in trainer.loss_types:
        if t not in TRL_LOSS_TYPES:
            return f"loss_type {t!r} is not served (supported: {', '.join(TRL_LOSS_TYPES)})"
    if "ipo" in trainer.loss_types and trainer.f_divergence_type != "reverse_kl":
        return "ipo with an f-divergence other than reverse_kl (TRL's score offsets do not cancel there)"
    cfg = _model_config(trainer)
    return head_refusal(getattr(cfg, "final_logit_softcapping", None), _logit_scale(cfg), HEAD_OUTPUTS)


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


# ---- GRPOTrainer ----------------------------------------------------------------------------------

def _grpo_compute_loss(self, model, inputs):
    """TRL 1.16's `GRPOTrainer._compute_loss` with the loss, its gradients and its metrics from one
    fused call: with the policy's head (`linear_grpo_loss`, three GEMMs per completion token) where the
    configuration allows, else on the fused head's log-probs (`pref_kernels.grpo_loss`)."""
    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    logits_to_keep = completion_ids.size(1)
    mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
    extra = {k: inputs.get(k) for k in ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask",
                                        "spatial_shapes", "num_tiles", "image_sizes", "token_type_ids",
                                        "mm_token_type_ids", "image_position_ids")}
    advantages = inputs["advantages"]
    if advantages.dim() == 2 and advantages.size(1) == 1:
        advantages = advantages.squeeze(1)
    if advantages.dim() != 1:
        raise NotImplementedError("pref_kernels: per-token advantages [B, T] (a GRPOTrainer subclass) are not "
                                  "served; the fused loss takes one advantage per sequence")
    mode = "train" if self.model.training else "eval"
    args = self.args
    g = self.current_gradient_accumulation_steps if mode == "train" else 1
    old = inputs.get("old_per_token_logps")
    ref = inputs.get("ref_per_token_logps") if self.beta != 0.0 else None
    sampling = inputs.get("sampling_per_token_logps") if self.off_policy_mask_threshold is not None else None
    is_weights = None
    if self.loss_type == "vespo":
        is_weights = inputs.get("importance_sampling_ratio")
    elif self.use_vllm and self.vllm_importance_sampling_correction:
        is_weights = inputs["importance_sampling_ratio"]
    entropy_coef = 0.0
    if self._entropy_bonus_enabled:
        entropy_coef = self.entropy_coef
    n_items = inputs.get("num_items_in_batch")
    kwargs = dict(
        loss_type=self.loss_type, beta=self.beta, epsilon=self.epsilon_low, epsilon_high=self.epsilon_high,
        delta=args.delta, importance_sampling_level=self.importance_sampling_level,
        max_completion_length=self.max_completion_length,
        num_items_in_batch=None if n_items is None else float(n_items), num_processes=self.accelerator.num_processes,
        gradient_accumulation_steps=g, steps_per_generation=args.steps_per_generation if mode == "train" else 1,
        entropy_coef=entropy_coef, off_policy_mask_threshold=self.off_policy_mask_threshold,
        use_bias_correction_kl=args.use_bias_correction_kl, sapo_temperature_pos=args.sapo_temperature_pos,
        sapo_temperature_neg=args.sapo_temperature_neg, vespo_k_pos=args.vespo_k_pos,
        vespo_lambda_pos=args.vespo_lambda_pos, vespo_k_neg=args.vespo_k_neg, vespo_lambda_neg=args.vespo_lambda_neg)
    # One call (head and loss) unless the top-entropy mask (a threshold over every entropy) or
    # VESPO's vLLM weights (summed over masked tokens too) need the log-probs first, or the forward
    # does not go through the fused head (prompt-once).
    one_call = (self.top_entropy_quantile >= 1.0 and not (self.loss_type == "vespo" and is_weights is not None)
                and not getattr(self, "pref_kernels_prompt_once", False))
    step = None
    if one_call:
        per_token = {"old": old, "ref": ref, "sampling": sampling, "is_weights": is_weights}
        step = _GrpoStep(completion_mask, advantages, per_token, inputs.get("tool_mask"), kwargs)
        _PENDING_GRPO_STEP.step = step
    try:
        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled, **extra)
    finally:
        _PENDING_GRPO_STEP.step = None
    if step is not None and step.loss is not None:
        loss, metrics = step.loss, step.metrics
    else:
        # The fused-head call declined the step (no gradient wanted, fp16), or the forward did not
        # reach it: the loss on the head's log-probs, as with the top-entropy mask.
        loss, metrics = grpo_loss(
            per_token_logps, advantages, mask, old, ref, entropy=entropies,
            top_entropy_quantile=self.top_entropy_quantile, vllm_is_weights=is_weights, sampling_logp=sampling,
            **kwargs)

    acc = self.accelerator
    m = self._metrics[mode]
    values = dict(zip(GRPO_METRIC_NAMES, metrics.detach()))
    if self._entropy_bonus_enabled:
        m["policy_loss"].append(acc.gather(values["policy_loss"][None]).nanmean().item())
        if mode == "train" and acc.sync_gradients:
            m["entropy_coef"].append(self.entropy_coef)
    if self.aux_loss_enabled:
        loss = loss + self.router_aux_loss_coef * aux_loss / g
        m["aux_loss"].append(acc.gather_for_metrics(aux_loss).mean().item())

    # The fused metrics are means on this process over the completion tokens (or, for sequence-level
    # importance sampling, over the sequences); TRL reduces sums and counts across processes.
    tokens = mask.sum().float()
    seqs = torch.tensor(float(mask.size(0)), device=mask.device)
    sequence_level = self.importance_sampling_level == "sequence"

    def global_mean(name, count):
        totals = acc.reduce(torch.stack([values[name].to(count.device) * count, count]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    if self.beta != 0.0:
        m["kl"].append(global_mean("kl", tokens))
    m["entropy"].append(global_mean("entropy", tokens))
    per_ratio = seqs if sequence_level else tokens
    if self.loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
        for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
            m[name].append(global_mean(name, per_ratio))
        low, high = _clip_fractions_per_sequence(self, per_token_logps, old, advantages, mask)
        from trl.trainer.utils import nanmax, nanmin

        m["clip_ratio/low_min"].append(nanmin(acc.gather(low)).item())
        m["clip_ratio/high_max"].append(nanmax(acc.gather(high)).item())
    elif self.loss_type == "cispo":
        m["cispo_clip_ratio"].append(global_mean("clip_ratio/high_mean", per_ratio))
    elif self.loss_type == "vespo":
        m["vespo/phi_seq_mean"].append(global_mean("vespo/phi_seq_mean", seqs))
    return loss


@torch.no_grad()
def _clip_fractions_per_sequence(self, logp, old, advantages, mask):
    """Per sequence, the fraction of its tokens clipped low and high (TRL's `clip_ratio/low_min` and
    `clip_ratio/high_max` are the min and max of these over the batch): a few [B, T] element-wise
    operations, for logging only."""
    log_ratio = torch.zeros_like(logp) if old is None else logp.detach() - old
    maskf = mask.to(logp.dtype)
    if self.importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0))[:, None]
    coef = torch.exp(log_ratio)
    if self.args.delta is not None:
        coef = coef.clamp(max=self.args.delta)
    a = advantages[:, None]
    low = ((coef < 1 - self.epsilon_low) & (a < 0)).to(logp.dtype)
    high = ((coef > 1 + self.epsilon_high) & (a > 0)).to(logp.dtype)

    def per_seq(x):
        return x.squeeze(1) if x.size(1) == 1 else (x * maskf).sum(-1) / maskf.sum(-1)
    return per_seq(low), per_seq(high)

