"""Bad input gets a clear Python exception, never a crash: dtypes (TypeError), shapes, strides,
contiguity and devices (ValueError, checked in Python), and what the crate checks (lengths,
layouts, configurations, out-of-range device data) as PrefKernelsError with the crate's message."""
import pytest
import torch

import pref_kernels as pk


def test_backend_and_library():
    assert pk.backend("cpu") == "emulator"
    assert pk.library_path().endswith("libpref_kernels.so")
    with pytest.raises(ValueError, match="CUDA and CPU"):
        pk.backend("meta")


def test_token_logprobs_refuses_bad_tensors():
    x = torch.randn(4, 10)
    t = torch.tensor([1, 2, 3, 4])
    with pytest.raises(TypeError, match="logits must be float32, float16, bfloat16, got int64"):
        pk.token_logprobs(torch.ones(4, 10, dtype=torch.long), t)
    with pytest.raises(TypeError, match="targets must be int32, int64"):
        pk.token_logprobs(x, t.float())
    with pytest.raises(ValueError, match=r"logits must be \[N, V\]"):
        pk.token_logprobs(torch.randn(2, 2, 10), t)
    with pytest.raises(ValueError, match=r"targets must have shape \[4\]"):
        pk.token_logprobs(x, t[:3])
    with pytest.raises(ValueError, match="rows must be contiguous"):
        pk.token_logprobs(torch.randn(10, 4).t(), t)
    with pytest.raises(ValueError, match="targets must be contiguous"):
        pk.token_logprobs(x, torch.arange(8)[::2])
    with pytest.raises(pk.PrefKernelsError, match=r"outside \[0, vocab\)"):
        pk.token_logprobs(x, torch.tensor([1, 2, 10, 4]))
    with pytest.raises(pk.PrefKernelsError, match="temperature"):
        pk.token_logprobs(x, t, temperature=float("nan"))


def test_losses_refuse_bad_configurations():
    logp = -torch.rand(12)
    mask = torch.ones(12, dtype=torch.bool)
    ref = -torch.rand(12)
    # aot sorts the batch: WPO weights and an f-divergence are refused, as TRL 1.16.
    with pytest.raises(pk.PrefKernelsError, match="aot"):
        pk.dpo_loss(logp, mask, ref, n_seqs=4, seq_len=3, loss_type="aot", use_weighting=True,
                    log_sum_sq=-torch.rand(12))
    with pytest.raises(pk.PrefKernelsError, match="aot"):
        pk.dpo_loss(logp, mask, ref, n_seqs=4, seq_len=3, loss_type="aot", f_divergence_type="js_divergence")
    with pytest.raises(ValueError, match="log_sum_sq"):
        pk.dpo_loss(logp, mask, ref, n_seqs=4, seq_len=3, use_weighting=True)
    with pytest.raises(ValueError, match="unknown TRL loss_type"):
        pk.dpo_loss(logp, mask, ref, n_seqs=4, seq_len=3, loss_type="sigmoidd")
    with pytest.raises(ValueError, match=r"mask must have shape \[12\]"):
        pk.dpo_loss(logp, mask[:5], ref, n_seqs=4, seq_len=3)
    with pytest.raises(pk.PrefKernelsError):
        pk.dpo_loss(logp, mask, ref, n_seqs=4, seq_len=4)  # 16 tokens claimed, 12 given
    with pytest.raises(pk.PrefKernelsError, match="beta"):
        pk.dpo_loss(logp, mask, ref, n_seqs=4, seq_len=3, beta=float("inf"))
    with pytest.raises(pk.PrefKernelsError):
        pk.dpo_loss(logp, mask, None, n_seqs=4, seq_len=3)  # DPO needs a reference
    with pytest.raises(ValueError, match="2 loss types but 1 loss_weights"):
        pk.dpo_loss(logp, mask, ref, n_seqs=4, seq_len=3, loss_type=["sigmoid", "sft"], loss_weights=[1.0])
    with pytest.raises(pk.PrefKernelsError):
        pk.preference_loss(logp, pk.loss_terms("sigmoid"), mask=mask, ref_logp=ref, n_seqs=4, seq_len=3,
                           chosen=torch.tensor([0, 9], dtype=torch.int32),
                           rejected=torch.tensor([2, 3], dtype=torch.int32))  # pair index 9 of 4 sequences
    # TRL 1.16 refuses an f-divergence other than reverse KL for apo_zero (it would be reverse KL here).
    for div in ("forward_kl", "js_divergence", "alpha_divergence"):
        with pytest.raises(pk.PrefKernelsError, match="apo_zero.*reverse-KL"):
            pk.dpo_loss(logp, mask, ref, n_seqs=4, seq_len=3, loss_type="apo_zero", f_divergence_type=div)
    pk.dpo_loss(logp, mask, ref, n_seqs=4, seq_len=3, loss_type="apo_zero")
    bad_cu = torch.tensor([0, 5, 3, 9, 12], dtype=torch.int32)
    with pytest.raises(pk.PrefKernelsError, match="cu_seqlens"):
        pk.dpo_loss(logp, mask, ref, cu_seqlens=bad_cu)


def test_attention_refuses_bad_shapes():
    layout = pk.prefix_layout([(3, [2, 2])], "cpu")
    q = torch.randn(7, 2, 64).bfloat16()
    k = torch.randn(7, 1, 64).bfloat16()
    with pytest.raises(TypeError, match="float16, bfloat16"):
        pk.shared_prefix_attention(q.float(), k.float(), k.float(), layout)
    with pytest.raises(ValueError, match="the layout has 7 tokens but q has 6"):
        pk.shared_prefix_attention(q[:6], k[:6], k[:6], layout)
    with pytest.raises(ValueError, match="k and v must be"):
        pk.shared_prefix_attention(q, k, k[:, :, :32].contiguous(), layout)
    with pytest.raises(pk.PrefKernelsError, match="no response"):
        pk.prefix_layout([(0, [])], "cpu")


def test_empty_pairs_and_inconsistent_layouts_are_refused():
    logp, mask, ref = -torch.rand(12), torch.ones(12, dtype=torch.bool), -torch.rand(12)
    empty = torch.empty(0, dtype=torch.int32)
    with pytest.raises(ValueError, match="at least one pair"):
        pk.preference_loss(logp, pk.loss_terms("sigmoid"), mask=mask, ref_logp=ref, n_seqs=4, seq_len=3,
                           chosen=empty, rejected=empty)
    hidden, weight = torch.randn(12, 8), torch.randn(20, 8)
    targets = torch.randint(0, 20, (12,))
    with pytest.raises(ValueError, match="at least one pair"):
        pk.linear_preference_loss(hidden, weight, targets, pk.loss_terms("sigmoid"), ref_logp=ref, n_seqs=4,
                                  seq_len=3, chosen=empty, rejected=empty)
    cu = torch.tensor([0, 3, 6, 9, 12], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"ref_seq must have shape \[4\]"):
        pk.linear_dpo_loss(hidden, weight, targets, ref_seq=-torch.rand(2), n_seqs=2, cu_seqlens=cu)
    loss, _ = pk.linear_dpo_loss(hidden, weight, targets, ref_seq=-torch.rand(4), n_seqs=0, cu_seqlens=cu)
    assert torch.isfinite(loss)
    scores, stats = torch.ops.pref_kernels.seq_reduce(logp, mask, None, None, 4, 3, 0)
    with pytest.raises(ValueError, match=r"stats must have shape \[4, 10\]"):
        torch.ops.pref_kernels.seq_reduce_backward(logp, mask, None, None, 4, 3, 0, torch.ones(4), stats[:3])
