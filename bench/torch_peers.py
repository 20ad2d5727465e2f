"""Same-process, same-GPU comparison of pref-kernels (through python/pref_kernels_torch.py) with its
peers, printed as markdown tables for bench/results/:

1. token log-probs, bf16 [16384, 128256]: ours vs PyTorch eager (log_softmax + gather, autograd
   backward) vs Liger-Kernel's cross-entropy (reduction="none"), plus the device-to-device copy
   bandwidth ceiling;
2. the DPO step (8 pairs x 1024 tokens, V = 128256): ours (token log-probs -> fused loss -> d/dlogits)
   vs a TRL-style eager step (log_softmax / gather / masked sum / logsigmoid, autograd);
3. shared-prefix attention (32 q / 8 kv heads, d = 128, bf16) vs SDPA (flash) on the duplicated
   layout and FlexAttention with the shared-prefix mask;
4. the fused LM head's peers from hidden states, bf16, H = 4096, M in {4096, 16384}, V in {128256,
   151936}: PyTorch eager (hidden @ W.T + log_softmax + gather, autograd), Liger
   LigerFusedLinearCrossEntropyLoss (reduction="none") and LigerFusedLinearDPOLoss, Apple's
   cut_cross_entropy linear_cross_entropy(reduction="none"); time, TFLOP/s under the 2MHV forward
   / 6MHV forward+backward convention and the peak extra memory. Ours at the same shapes is the
   criterion bench `linear_logprobs` of the same gpu-run (the C ABI has no linear entry point yet).

Timing: CUDA events on the current stream, warm-up, median (p20/p80) of >= 20 runs, inputs random
(never constant); every logits tensor exceeds the 50 MB L2. Usage: python3 bench/torch_peers.py
"""
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/python")
import pref_kernels_torch as pk  # noqa: E402


def timed(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return statistics.median(times), times[len(times) // 5], times[4 * len(times) // 5]


def row(name, t, floor_ms=None, extra=""):
    med, p20, p80 = t
    frac = f"{floor_ms / med:.0%}" if floor_ms else ""
    print(f"| {name} | {med:.3f} | {p20:.3f} | {p80:.3f} | {frac} | {extra} |")


def header(title):
    print(f"\n### {title}\n")
    print("| what | median ms | p20 | p80 | of floor | notes |")
    print("|---|---:|---:|---:|---:|---|")


def copy_bandwidth():
    x = torch.empty(2 ** 31, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    t = timed(lambda: y.copy_(x))
    return 2 * x.numel() * 2 / (t[0] / 1e3), t


def token_logprobs(bw):
    n, v = 16384, 128256
    header(f"token log-probs, bf16 [{n}, {v}] ({n * v * 2 / 1e9:.2f} GB)")
    logits = torch.randn(n, v, device="cuda", dtype=torch.bfloat16) * 2
    targets = torch.randint(0, v, (n,), device="cuda")
    gb = n * v * 2
    fwd_floor, fb_floor = gb / bw * 1e3, 3 * gb / bw * 1e3
    ours_f = timed(lambda: pk.token_logprobs(logits, targets))
    row("ours forward", ours_f, fwd_floor, f"{gb / ours_f[0] / 1e6:.0f} GB/s")

    def ours_fb():
        x = logits.detach().requires_grad_()
        pk.token_logprobs(x, targets).sum().backward()
    ours_fwbw = timed(ours_fb)
    row("ours forward+backward", ours_fwbw, fb_floor)

    def eager_f():
        return torch.log_softmax(logits.float(), -1).gather(1, targets[:, None])
    def eager_fb():
        x = logits.detach().requires_grad_()
        torch.log_softmax(x.float(), -1).gather(1, targets[:, None]).sum().backward()
    e_f, e_fb = timed(eager_f, reps=10), timed(eager_fb, reps=10)
    row("PyTorch eager forward (fp32 log_softmax + gather)", e_f, fwd_floor, f"ours {e_f[0] / ours_f[0]:.2f}x faster")
    row("PyTorch eager forward+backward", e_fb, fb_floor, f"ours {e_fb[0] / ours_fwbw[0]:.2f}x faster")
    try:
        from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction

        def liger_fb():
            x = logits.detach().requires_grad_()
            out = LigerCrossEntropyFunction.apply(x, targets, None, -100, 0.0, 0.0, "none")
            (out[0] if isinstance(out, tuple) else out).sum().backward()
        lf = timed(liger_fb)
        row("Liger cross-entropy forward+backward (reduction none)", lf, fb_floor, f"ours {lf[0] / ours_fwbw[0]:.2f}x faster")
    except Exception as e:  # noqa: BLE001
        print(f"| Liger cross-entropy | n/a | | | | not run: {e} |")


def dpo_step():
    pairs, length, v = 8, 1024, 128256
    n_seqs, n = 2 * pairs, 2 * pairs * length
    header(f"DPO step, {pairs} pairs x {length} tokens, V = {v}, bf16")
    logits = torch.randn(n, v, device="cuda", dtype=torch.bfloat16) * 2
    targets = torch.randint(0, v, (n,), device="cuda")
    mask = torch.ones(n, device="cuda", dtype=torch.uint8)
    mask.view(n_seqs, length)[:, :256] = 0
    ref = torch.randn(n, device="cuda") - 12

    def ours():
        x = logits.detach().requires_grad_()
        logp = pk.token_logprobs(x, targets)
        metrics, grad = pk.preference_loss(logp.detach(), mask, ref, n_seqs, length, [("sigmoid", 1.0, 0.1, 0.0, 0.0, 0)])
        logp.backward(grad)
        return metrics
    ours_t = timed(ours)
    row("ours (token log-probs + fused DPO loss + d/dlogits)", ours_t)

    def trl():
        x = logits.detach().requires_grad_()
        lp = torch.log_softmax(x.float(), -1).gather(1, targets[:, None]).squeeze(1)
        s = (lp * mask).view(n_seqs, length).sum(-1)
        r = (ref * mask).view(n_seqs, length).sum(-1)
        z = 0.1 * ((s[:pairs] - r[:pairs]) - (s[pairs:] - r[pairs:]))
        (-F.logsigmoid(z)).mean().backward()
    trl_t = timed(trl, reps=10)
    row("TRL-style eager step", trl_t, None, f"ours {trl_t[0] / ours_t[0]:.2f}x faster")


def attention():
    hq, hkv, d = 32, 8, 128
    header(f"shared-prefix attention, Hq {hq} / Hkv {hkv}, d {d}, bf16, forward+backward")
    for g, p, r in [(2, 1024, 256), (8, 4096, 512), (16, 4096, 512)]:
        layout = pk.prefix_layout([(p, [r] * g)], "cuda")
        t = layout[2]
        q = torch.randn(t, hq, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(t, hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(t, hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        do = torch.randn(t, hq, d, device="cuda", dtype=torch.bfloat16)
        pairs = p * (p + 1) // 2 + g * (p * r + r * (r + 1) // 2)
        flops = 3.5 * 4 * d * pairs * hq
        ours = timed(lambda: pk.shared_prefix_attention(q, k, v, layout).backward(do))
        row(f"ours G={g} P={p} R={r}", ours, None, f"{flops / ours[0] / 1e9:.0f} TFLOP/s dedup")
        # SDPA (flash) on the duplicated layout: G sequences [prefix ++ r_g], causal.
        qd = torch.randn(g, hq, p + r, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        kd = torch.randn(g, hq, p + r, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        vd = torch.randn(g, hq, p + r, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dod = torch.randn(g, hq, p + r, d, device="cuda", dtype=torch.bfloat16)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            sd = timed(lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=True).backward(dod))
        row(f"SDPA flash, duplicated, G={g} P={p} R={r}", sd, None, f"ours {sd[0] / ours[0]:.2f}x faster")
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            seg = torch.zeros(t, dtype=torch.int32, device="cuda")
            for i in range(g):
                seg[p + i * r:p + (i + 1) * r] = i + 1

            def mask_mod(b, h, qi, kj):
                return (kj <= qi) & ((seg[kj] == 0) | (seg[kj] == seg[qi]))
            bm = create_block_mask(mask_mod, None, None, t, t)
            fa = torch.compile(flex_attention)
            qf, kf, vf = (x.detach().transpose(0, 1)[None].contiguous().requires_grad_() for x in (q, k, v))
            dof = do.transpose(0, 1)[None].contiguous()
            fx = timed(lambda: fa(qf, kf, vf, block_mask=bm, enable_gqa=True).backward(dof))
            row(f"FlexAttention shared-prefix mask, G={g} P={p} R={r}", fx, None, f"ours {fx[0] / ours[0]:.2f}x faster")
        except Exception as e:  # noqa: BLE001
            print(f"| FlexAttention G={g} | n/a | | | | not run: {e} |")


def peak_extra_gb(fn):
    """Runs fn once and returns the peak memory it allocated beyond what was live before (GB)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def linear_head():
    h = 4096
    print("\n### fused LM head peers, bf16, H = 4096 (ours: criterion bench linear_logprobs, same run)\n")
    print("| what | shape | median ms | p20 | p80 | TFLOP/s | peak extra GB | notes |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for v in (128256, 151936):
        w = (torch.randn(v, h, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
        for m in (4096, 16384):
            x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16).requires_grad_()
            t = torch.randint(0, v, (m,), device="cuda")
            shape = f"M{m} V{v}"
            fl = 2 * m * h * v

            def report(name, fn, flops, reps=10, note=""):
                try:
                    gb = peak_extra_gb(fn)
                    tt = timed(fn, reps=reps, warmup=2)
                    print(f"| {name} | {shape} | {tt[0]:.2f} | {tt[1]:.2f} | {tt[2]:.2f} | "
                          f"{flops / tt[0] / 1e9:.0f} | {gb:.2f} | {note} |")
                except Exception as e:  # noqa: BLE001
                    print(f"| {name} | {shape} | n/a | | | | | skipped: {type(e).__name__}: {str(e)[:120]} |")
                x.grad = None
                w.grad = None
                torch.cuda.empty_cache()

            def eager_f():
                with torch.no_grad():
                    return torch.log_softmax((x @ w.T).float(), -1).gather(1, t[:, None])

            def eager_fb():
                torch.log_softmax((x @ w.T).float(), -1).gather(1, t[:, None]).sum().backward()
            report("PyTorch eager forward", eager_f, fl, reps=5)
            report("PyTorch eager forward+backward", eager_fb, 3 * fl, reps=5)
            try:
                from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
                flce = LigerFusedLinearCrossEntropyLoss(reduction="none")
                report("Liger FLCE forward+backward", lambda: flce(w, x, t).sum().backward(), 3 * fl)
            except Exception as e:  # noqa: BLE001
                print(f"| Liger FLCE | {shape} | n/a | | | | | skipped: {e} |")
            try:
                from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
                dpo = LigerFusedLinearDPOLoss(beta=0.1, compute_nll_loss=False, use_ref_model=False)
                seq = 1024
                xb, tb = x.view(m // seq, seq, h), t.view(m // seq, seq)

                def liger_dpo():
                    out = dpo(w, xb, tb)
                    (out[0] if isinstance(out, tuple) else out).backward()
                report("Liger FusedLinearDPO step", liger_dpo, 3 * fl, note="no reference model")
            except Exception as e:  # noqa: BLE001
                print(f"| Liger FusedLinearDPO | {shape} | n/a | | | | | skipped: {e} |")
            try:
                from cut_cross_entropy import linear_cross_entropy
                report("CCE forward", lambda: linear_cross_entropy(x.detach(), w.detach(), t, reduction="none"), fl)
                report("CCE forward+backward",
                       lambda: linear_cross_entropy(x, w, t, reduction="none").sum().backward(), 3 * fl)
            except Exception as e:  # noqa: BLE001
                print(f"| cut_cross_entropy | {shape} | n/a | | | | | skipped: {e} |")
            del x, t
        del w
        torch.cuda.empty_cache()


if __name__ == "__main__":
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    bw, t = copy_bandwidth()
    print(f"\ndevice-to-device copy: {bw / 1e12:.2f} TB/s (median {t[0]:.3f} ms for 2 x 4.3 GB)")
    token_logprobs(bw)
    dpo_step()
    attention()
    linear_head()
