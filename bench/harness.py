"""Same-run benchmark harness: pref-kernels (the `pref_kernels` torch package) and its peers in one
process on one device, written to a markdown table and PNG plots.

    python3 bench/harness.py [--smoke] [--out DIR] [--only token_logprobs,dpo_step,attention,linear_head]

On a GPU: the device-to-device copy bandwidth first (the floor of every memory-bound row), then
  1. token log-probs (bf16 logits [N, V], N in {4096, 16384}, V in {32000, 128256, 151936, 262144}):
     forward and forward+backward, ours vs PyTorch eager (fp32 log_softmax + gather), TRL's
     selective_log_softmax, F.cross_entropy(reduction="none"), Liger's cross entropy, and
     torch.compile of the eager code; entropy: ours vs TRL's entropy_from_logits;
  2. the DPO step from logits (8 pairs x 1024 tokens, V = 128256): ours (token log-probs + fused
     loss + one backward) vs TRL-style eager and its torch.compile;
  3. shared-prefix attention forward+backward (32 q / 8 kv heads, d = 128) vs SDPA on the
     duplicated layout and FlexAttention with the shared-prefix mask;
  4. the fused LM head from hidden states (bf16, H = 4096, M in {4096, 16384}, V in {128256,
     151936}): ours (the DPO step, and log-probs with their backward) vs PyTorch eager, TRL 1.16's
     own fused head (`ChunkedLogProbFunction`), Liger FLCE and FusedLinearDPO, Apple CCE, with
     TFLOP/s and peak extra memory;
  5. the GRPO loss from hidden states (16 completions x 1024 tokens, Qwen2-1.5B's H = 1536 and
     V = 151936, DAPO with beta = 0.04): ours (fused head with entropy + `grpo_loss`, and the one-call
     `linear_grpo_loss`) vs TRL's head
     + TRL-style eager loss, and Liger's `LigerFusedLinearGRPOLoss`;
  6. a GRPO step through a Qwen2-1.5B-shaped decoder (28 layers, H 1536, MLP 8960, 12 q / 2 kv
     heads, d 128, V 151936, random bf16 weights; written here in plain PyTorch, so the GPU machine
     needs no transformers) on one group of G = 8 completions of 1024 tokens sharing a 512-token
     prompt: the duplicated layout (SDPA, 8 x 1536 tokens) vs prompt-once (the shared-prefix kernel,
     512 + 8 x 1024 tokens), both with the fused head and the fused loss: time and peak memory.
Timing: CUDA events on the current stream around the op only, warm-up runs first (torch.compile's
compile time reported apart), median and p20/p80 of >= 20 runs, inputs random (never constant)
and rotated among enough independently allocated sets to exceed twice the L2; every timed output
is checked against eager first. Memory: the peak allocated beyond what was live before the call.
A peer that cannot be imported or run is listed as skipped, with the reason, never dropped.

--smoke (the default without a GPU, and what CI runs): tiny shapes on the CPU, the kernels through
the emulator, wall-clock timing; it tests the harness itself, its numbers mean nothing.
"""
import argparse
import datetime
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

try:
    import pref_kernels as pk
except ImportError:  # a checkout without the package installed: python/ with PREF_KERNELS_LIB set
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import pref_kernels as pk

L2_BYTES = 50 * 2 ** 20


class Harness:
    def __init__(self, device, smoke, reps):
        self.device, self.smoke, self.reps = device, smoke, reps
        self.rows = []       # (section, shape, provider, median, p20, p80, floor_ms, extra, peak_gb, note)
        self.copy_bw = None  # bytes/s
        self.gemm_rate = None  # bf16 FLOP/s of cuBLAS (torch.mm), measured in the same run

    # ---- timing -----------------------------------------------------------------------------
    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def time(self, fns):
        """Median, p20, p80 in ms of running fns[i % len(fns)] (rotated input sets)."""
        for f in fns:  # warm-up: every input set once, then once more
            f()
        fns[0]()
        self.sync()
        times = []
        for i in range(self.reps):
            f = fns[i % len(fns)]
            if self.device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                f()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                f()
                times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        return statistics.median(times), times[len(times) // 5], times[(4 * len(times)) // 5]

    def peak_gb(self, f):
        if self.device.type != "cuda":
            return None
        self.sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        f()
        self.sync()
        return (torch.cuda.max_memory_allocated() - base) / 1e9

    def sets(self, bytes_per_set):
        """How many input sets to rotate so that consecutive runs miss in L2."""
        return max(1, min(4, math.ceil(2 * L2_BYTES / max(bytes_per_set, 1))))

    def run(self, section, shape, provider, make, check=None, floor_ms=None, extra=None, compile_note=None):
        """Times provider `make(set_index) -> fn` over rotated sets; records a skipped row on any error."""
        try:
            n_sets = make.n_sets if hasattr(make, "n_sets") else 1
            fns = [make(i) for i in range(n_sets)]
            t_compile = None
            if compile_note:
                t0 = time.perf_counter()
                fns[0]()
                self.sync()
                t_compile = time.perf_counter() - t0
            if check is not None:
                check(fns[0]())
            peak = self.peak_gb(fns[0])
            med, p20, p80 = self.time(fns)
            note = f"compile {t_compile:.1f} s" if t_compile is not None else ""
            self.rows.append((section, shape, provider, med, p20, p80, floor_ms, extra(med) if extra else "", peak,
                              note))
            print(f"[{section}] {shape} | {provider}: {med:.3f} ms"
                  f"{'' if peak is None else f', peak +{peak:.2f} GB'}", flush=True)
        except Exception as e:  # noqa: BLE001  (a peer that fails is listed, not dropped)
            self.rows.append((section, shape, provider, None, None, None, floor_ms, "", None,
                              f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:140] if str(e) else ''}"))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def skip(self, section, shape, provider, why):
        self.rows.append((section, shape, provider, None, None, None, None, "", None, f"skipped: {why}"))

    # ---- output -----------------------------------------------------------------------------
    def markdown(self, title):
        out = [f"# {title}", ""]
        for section in dict.fromkeys(r[0] for r in self.rows):
            out += [f"## {section}", "", "| shape | provider | median ms | p20 | p80 | of floor | peak extra GB | "
                    "throughput | notes |", "|---|---|---:|---:|---:|---:|---:|---|---|"]
            for s, shape, prov, med, p20, p80, floor, extra, peak, note in self.rows:
                if s != section:
                    continue
                f = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
                frac = f"{floor / med:.0%}" if floor and med else ""
                pk_gb = "" if peak is None else f"{peak:.2f}"
                out.append(f"| {shape} | {prov} | {f(med)} | {f(p20)} | {f(p80)} | {frac} | {pk_gb} | {extra} | "
                           f"{note} |")
            out.append("")
        return "\n".join(out)

    def plots(self, path_prefix):
        """Time and peak memory against V for each N (token log-probs forward+backward)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception as e:  # noqa: BLE001
            return [f"plots skipped: matplotlib not importable ({e})"]
        rows = [r for r in self.rows if r[0] == "token log-probs, forward+backward" and r[3] is not None]
        if not rows:
            return ["plots skipped: no token log-probs rows ran"]
        made = []
        for what, col, unit in (("time", 3, "ms"), ("memory", 8, "GB")):
            if all(r[col] is None for r in rows):
                made.append(f"{what} plot skipped: no {what} figures (peak memory is measured on CUDA only)")
                continue
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for prov in dict.fromkeys(r[2] for r in rows):
                for n in sorted({int(r[1].split("x")[0][2:]) for r in rows}):
                    pts = sorted((int(r[1].split("V")[1]), r[col]) for r in rows
                                 if r[2] == prov and r[1].startswith(f"N={n}x") and r[col] is not None)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{prov}, N={n}")
            ax.set_xlabel("vocabulary size V")
            ax.set_ylabel(f"{what} ({unit})")
            ax.set_title(f"token log-probs fwd+bwd: {what} ({self.device.type}{', smoke' if self.smoke else ''})")
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
            p = f"{path_prefix}-logprobs-{what}.png"
            fig.tight_layout()
            fig.savefig(p, dpi=110)
            plt.close(fig)
            made.append(p)
        return made


def rand_logits(n, v, dtype, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(n, v, generator=g) * 2).to(dtype).to(device)


def make_sets(h, n_bytes, build):
    """A `make(i)` with the rotation count for inputs of n_bytes."""
    build.n_sets = h.sets(n_bytes)
    return build


def token_logprobs(h):
    dev = h.device
    grid = [(64, 512), (64, 2048)] if h.smoke else [(n, v) for n in (4096, 16384)
                                                     for v in (32000, 128256, 151936, 262144)]
    try:
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax
    except Exception as e:  # noqa: BLE001
        selective_log_softmax = entropy_from_logits = None
        trl_why = f"TRL not importable: {e}"
    try:
        from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction
    except Exception as e:  # noqa: BLE001
        LigerCrossEntropyFunction = None
        liger_why = f"liger_kernel not importable: {e}"
    for n, v in grid:
        shape = f"N={n}x V{v}"
        nbytes = n * v * 2
        data = {}

        def inputs(i):
            if i not in data:
                x = rand_logits(n, v, torch.bfloat16, dev, 1000 + i)
                t = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(i)).to(dev)
                t[::4] = -100
                data[i] = (x, t)
            return data[i]
        x0, t0 = inputs(0)
        want = torch.log_softmax(x0.float(), -1).gather(1, t0.clamp(min=0)[:, None]).squeeze(1) * (t0 != -100)

        def close(got):
            err = (got.float() - want).abs().max().item()
            assert err < 5e-2, f"output differs from eager by {err}"
        fwd_floor = nbytes / h.copy_bw * 1e3 if h.copy_bw else None
        gbps = (lambda passes: (lambda ms: f"{passes * nbytes / ms / 1e6:.0f} GB/s"))
        sec_f, sec_b = "token log-probs, forward", "token log-probs, forward+backward"

        def fwd(fn):
            return make_sets(h, nbytes, lambda i: (lambda x=inputs(i)[0], t=inputs(i)[1]: fn(x, t)))

        def fwdbwd(fn):
            def build(i):
                x, t = inputs(i)
                g = torch.randn(n, generator=torch.Generator().manual_seed(7)).to(dev)

                def step():
                    xx = x.detach().requires_grad_()
                    out = fn(xx, t)
                    out.backward(g)
                    return out
                return step
            return make_sets(h, nbytes, build)

        def eager(x, t):
            return torch.log_softmax(x.float(), -1).gather(1, t.clamp(min=0)[:, None]).squeeze(1) * (t != -100)

        def ce(x, t):
            return -F.cross_entropy(x.float(), t, reduction="none", ignore_index=-100)
        ours = lambda x, t: pk.token_logprobs(x, t)  # noqa: E731
        providers = [("pref-kernels", ours), ("PyTorch eager (fp32 log_softmax + gather)", eager),
                     ("F.cross_entropy(reduction='none')", ce)]
        for name, fn in providers:
            h.run(sec_f, shape, name, fwd(fn), check=close, floor_ms=fwd_floor, extra=gbps(1))
            h.run(sec_b, shape, name, fwdbwd(fn), floor_ms=fwd_floor and 3 * fwd_floor, extra=gbps(3))
        compiled = torch.compile(eager)
        h.run(sec_f, shape, "torch.compile(eager)", fwd(compiled), check=close, floor_ms=fwd_floor, extra=gbps(1),
              compile_note=True)
        if selective_log_softmax is not None:
            trl_fn = lambda x, t: selective_log_softmax(x, t.clamp(min=0)) * (t != -100)  # noqa: E731
            h.run(sec_f, shape, "TRL selective_log_softmax", fwd(trl_fn), check=close, floor_ms=fwd_floor,
                  extra=gbps(1))
            h.run(sec_b, shape, "TRL selective_log_softmax", fwdbwd(trl_fn), floor_ms=fwd_floor and 3 * fwd_floor,
                  extra=gbps(3))
            ent_ours = lambda x, t: pk.token_logprobs(x, t, return_entropy=True)[1]  # noqa: E731
            h.run("entropy, forward", shape, "pref-kernels (with the log-probs)", fwd(ent_ours), floor_ms=fwd_floor)
            h.run("entropy, forward", shape, "TRL entropy_from_logits", fwd(lambda x, t: entropy_from_logits(x)),
                  floor_ms=fwd_floor)
        else:
            h.skip(sec_f, shape, "TRL selective_log_softmax", trl_why)
            h.skip("entropy, forward", shape, "TRL entropy_from_logits", trl_why)
        if LigerCrossEntropyFunction is not None and dev.type == "cuda":
            def liger(x, t):
                out = LigerCrossEntropyFunction.apply(x, t, None, -100, 0.0, 0.0, "none")
                return -(out[0] if isinstance(out, tuple) else out)
            h.run(sec_b, shape, "Liger cross entropy (reduction none)", fwdbwd(liger),
                  floor_ms=fwd_floor and 3 * fwd_floor, extra=gbps(3))
        else:
            h.skip(sec_b, shape, "Liger cross entropy", liger_why if LigerCrossEntropyFunction is None
                   else "Triton kernels need a CUDA device")
        data.clear()


def trl_style_dpo(x, targets, mask, ref, n_seqs, seq_len, beta=0.1):
    lp = torch.log_softmax(x.float(), -1).gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    s = (lp * mask).view(n_seqs, seq_len).sum(-1)
    r = (ref * mask).view(n_seqs, seq_len).sum(-1)
    p = n_seqs // 2
    return (-F.logsigmoid(beta * ((s[:p] - r[:p]) - (s[p:] - r[p:])))).mean()


def dpo_step(h):
    dev = h.device
    pairs, seq_len, v = (2, 16, 1024) if h.smoke else (8, 1024, 128256)
    n_seqs, n = 2 * pairs, 2 * pairs * seq_len
    shape = f"{pairs} pairs x {seq_len} tokens, V {v}"
    x = rand_logits(n, v, torch.bfloat16, dev, 5)
    t = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(3)).to(dev)
    t.view(n_seqs, seq_len)[:, : seq_len // 4] = -100
    mask = t != -100
    ref = (-torch.rand(n, generator=torch.Generator().manual_seed(4)) * 3 - 10).to(dev)
    want = trl_style_dpo(x, t, mask, ref, n_seqs, seq_len).item()

    def close(got):
        assert abs(got.item() - want) < 1e-3, f"loss {got.item()} vs eager {want}"
    floor = 3 * n * v * 2 / h.copy_bw * 1e3 if h.copy_bw else None

    def ours():
        xx = x.detach().requires_grad_()
        loss, _ = pk.dpo_loss(pk.token_logprobs(xx, t), mask, ref, n_seqs=n_seqs, seq_len=seq_len, beta=0.1)
        loss.backward()
        return loss

    def eager(fn):
        def step():
            xx = x.detach().requires_grad_()
            loss = fn(xx, t, mask, ref, n_seqs, seq_len)
            loss.backward()
            return loss
        return step
    h.run("DPO step from logits", shape, "pref-kernels", lambda i: ours, check=close, floor_ms=floor)
    h.run("DPO step from logits", shape, "TRL-style eager", lambda i: eager(trl_style_dpo), check=close,
          floor_ms=floor)
    compiled = torch.compile(trl_style_dpo)
    h.run("DPO step from logits", shape, "torch.compile(TRL-style)", lambda i: eager(compiled), check=close,
          floor_ms=floor, compile_note=True)


def attention(h):
    dev = h.device
    hq, hkv, d = (4, 2, 64) if h.smoke else (32, 8, 128)
    grid = [(2, 16, 8)] if h.smoke else [(2, 1024, 256), (8, 4096, 512), (16, 4096, 512)]
    sec = "shared-prefix attention, forward+backward"
    for g, p, r in grid:
        shape = f"G={g} P={p} R={r}, Hq {hq}/Hkv {hkv}, d {d}"
        layout = pk.prefix_layout([(p, [r] * g)], dev)
        tt = layout[2]
        gen = torch.Generator().manual_seed(g)
        q, k, v, do = (torch.randn(tt, hh, d, generator=gen).bfloat16().to(dev) for hh in (hq, hkv, hkv, hq))
        pairs = p * (p + 1) // 2 + g * (p * r + r * (r + 1) // 2)
        flops = 3.5 * 4 * d * pairs * hq
        tflops = lambda ms: f"{flops / ms / 1e9:.1f} TFLOP/s dedup"  # noqa: E731

        def ours():
            qq, kk, vv = (z.detach().requires_grad_() for z in (q, k, v))
            o = pk.shared_prefix_attention(qq, kk, vv, layout)
            o.backward(do)
            return o
        h.run(sec, shape, "pref-kernels", lambda i: ours, extra=tflops)
        if dev.type == "cuda" and torch.cuda.get_device_capability(dev) == (9, 0):
            # v3 (every GEMM on wgmma): opt-in until this row says it pays.
            os.environ["PREF_KERNELS_ATTN"] = "v3"
            try:
                h.run(sec, shape, "pref-kernels v3 (wgmma)", lambda i: ours, extra=tflops)
            finally:
                os.environ.pop("PREF_KERNELS_ATTN", None)
        # SDPA on the duplicated layout: G sequences [prefix ++ r_g], causal, KV heads repeated.
        qd, kd, vd, dod = (torch.randn(g, hq, p + r, d, generator=gen).bfloat16().to(dev) for _ in range(4))

        def sdpa():
            a, b, c = (z.detach().requires_grad_() for z in (qd, kd, vd))
            o = F.scaled_dot_product_attention(a, b, c, is_causal=True)
            o.backward(dod)
            return o
        h.run(sec, shape, "SDPA, duplicated prefix", lambda i: sdpa, extra=tflops)
        if dev.type != "cuda":
            h.skip(sec, shape, "FlexAttention", "needs a CUDA device for its Triton kernels")
            continue
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            seg = torch.zeros(tt, dtype=torch.int32, device=dev)
            for i in range(g):
                seg[p + i * r:p + (i + 1) * r] = i + 1

            def mask_mod(b, hh, qi, kj):
                return (kj <= qi) & ((seg[kj] == 0) | (seg[kj] == seg[qi]))
            bm = create_block_mask(mask_mod, None, None, tt, tt, device=dev)
            fa = torch.compile(flex_attention)
            qf, kf, vf = (z.transpose(0, 1)[None].contiguous() for z in (q, k, v))
            dof = do.transpose(0, 1)[None].contiguous()

            def flex():
                a, b, c = (z.detach().requires_grad_() for z in (qf, kf, vf))
                o = fa(a, b, c, block_mask=bm, enable_gqa=True)
                o.backward(dof)
                return o
            h.run(sec, shape, "FlexAttention, shared-prefix mask", lambda i: flex, extra=tflops, compile_note=True)
        except Exception as e:  # noqa: BLE001
            h.skip(sec, shape, "FlexAttention", f"{type(e).__name__}: {e}")


def tflops(flops):
    """A row's throughput column: `flops` over its median time."""
    return lambda ms: f"{flops / ms / 1e9:.1f} TFLOP/s"


def backward_step(*leaves):
    """`step(fn)`: a provider that clears the leaves' gradients, runs `fn()` and its backward."""
    def step(fn):
        def run():
            for t in leaves:
                t.grad = None
            out = fn()
            out.backward()
            return out
        return lambda i: run
    return step


def linear_head(h):
    """From hidden states: ours (no [N, V] logits anywhere) vs the peers, forward+backward."""
    sec = "fused LM head, forward+backward"
    dev = h.device
    hid, grid, seq = (32, [(64, 512)], 16) if h.smoke else (4096, [(m, v) for v in (128256, 151936)
                                                                    for m in (4096, 16384)], 1024)
    for m, v in grid:
        gen = torch.Generator().manual_seed(m + v)
        w = (torch.randn(v, hid, generator=gen) * 0.02).bfloat16().to(dev).requires_grad_()
        x = torch.randn(m, hid, generator=gen).bfloat16().to(dev).requires_grad_()
        t = torch.randint(0, v, (m,), generator=gen).to(dev)
        ref = (-torch.rand(m, generator=gen) * 3 - 10).to(dev)
        shape = f"M={m} H={hid} V={v}"
        fl = 2 * m * hid * v
        tf = tflops
        step = backward_step(x, w)
        n_seqs = m // seq
        # Floor: the 3 GEMMs a step needs at the run's GEMM rate (a 4th, the recompute, is ours to lose).
        floor = 3 * fl / h.gemm_rate * 1e3 if h.gemm_rate else None
        h.run(sec, shape, "pref-kernels linear_dpo_loss (DPO step, 3 GEMMs/token)",
              step(lambda: pk.linear_dpo_loss(x, w, t, ref, n_seqs=n_seqs, seq_len=seq, beta=0.1)[0]),
              extra=tf(3 * fl), floor_ms=floor)
        h.run(sec, shape, "pref-kernels linear_token_logprobs (4 GEMMs/token)",
              step(lambda: pk.linear_token_logprobs(x, w, t).sum()), extra=tf(4 * fl), floor_ms=floor)
        h.run(sec, shape, "PyTorch eager (x @ W.T, fp32 log_softmax, gather)",
              step(lambda: torch.log_softmax((x @ w.T).float(), -1).gather(1, t[:, None]).sum()), extra=tf(3 * fl))
        trl_head = trl_chunked_logprob()
        if isinstance(trl_head, str):
            h.skip(sec, shape, "TRL 1.16 fused head", trl_head)
        else:
            h.run(sec, shape, "TRL 1.16 fused head (ChunkedLogProbFunction, log-probs)",
                  step(lambda: trl_head.apply(x, w, None, t, 1.0, 4096, None, 1.0, ("log_probs",))[0].sum()),
                  extra=tf(4 * fl))
        if dev.type != "cuda":
            for prov in ("Liger FLCE", "Liger FusedLinearDPO", "cut_cross_entropy"):
                h.skip(sec, shape, prov, "Triton kernels need a CUDA device")
            continue
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
            flce = LigerFusedLinearCrossEntropyLoss(reduction="none")
            h.run(sec, shape, "Liger FLCE", step(lambda: flce(w, x, t).sum()), extra=tf(3 * fl))
        except Exception as e:  # noqa: BLE001
            h.skip(sec, shape, "Liger FLCE", str(e))
        try:
            from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
            dpo = LigerFusedLinearDPOLoss(beta=0.1, compute_nll_loss=False, use_ref_model=False)
            xb, tb = x.view(n_seqs, seq, hid), t.view(n_seqs, seq)
            h.run(sec, shape, "Liger FusedLinearDPO step",
                  step(lambda: (lambda o: o[0] if isinstance(o, tuple) else o)(dpo(w, xb, tb))), extra=tf(3 * fl))
        except Exception as e:  # noqa: BLE001
            h.skip(sec, shape, "Liger FusedLinearDPO", str(e))
        try:
            from cut_cross_entropy import linear_cross_entropy
            h.run(sec, shape, "CCE", step(lambda: linear_cross_entropy(x, w, t, reduction="none").sum()),
                  extra=tf(3 * fl))
        except Exception as e:  # noqa: BLE001
            h.skip(sec, shape, "cut_cross_entropy", str(e))
        del x, t, w
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def trl_chunked_logprob():
    """TRL 1.16's own fused head (`trl/kernels/chunked_logprob.py`, Triton kernels): imported from an
    installed TRL, else loaded by file from wherever `trl/` is on sys.path (the peer wheel unpacked
    without its dependencies) with stand-ins for its two imports outside the file: transformers'
    `is_triton_available` and TRL's `maybe_gather_lm_head_ctx` (a no-op on one device). Returns
    the `ChunkedLogProbFunction`, or why it is unavailable (a string)."""
    try:
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction
        return ChunkedLogProbFunction
    except Exception as e:  # noqa: BLE001
        first = f"{type(e).__name__}: {e}"
    import contextlib
    import importlib.util
    import types
    path = next((os.path.join(d, "trl", "kernels", "chunked_logprob.py") for d in sys.path
                 if os.path.isfile(os.path.join(d, "trl", "kernels", "chunked_logprob.py"))), None)
    if path is None:
        return f"TRL not importable ({first[:80]}) and no trl/kernels/chunked_logprob.py on sys.path"
    saved = {k: sys.modules.get(k) for k in ("transformers", "transformers.utils", "trl", "trl.kernels",
                                             "trl.trainer", "trl.trainer.utils")}
    try:
        tu = types.ModuleType("transformers.utils")
        tu.is_triton_available = lambda: importlib.util.find_spec("triton") is not None
        stubs = {"transformers": types.ModuleType("transformers"), "transformers.utils": tu}
        for name in ("trl", "trl.kernels", "trl.trainer"):
            stubs[name] = types.ModuleType(name)
            stubs[name].__path__ = []
        utils = types.ModuleType("trl.trainer.utils")
        utils.maybe_gather_lm_head_ctx = lambda *a, **k: contextlib.nullcontext()
        stubs["trl.trainer.utils"] = utils
        sys.modules.update(stubs)
        spec = importlib.util.spec_from_file_location("trl.kernels.chunked_logprob", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        # Its backward imports `..trainer.utils` at call time: keep that stand-in registered.
        for k, v in saved.items():
            if k != "trl.trainer.utils" and k not in ("trl", "trl.trainer"):
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v
        return mod.ChunkedLogProbFunction
    except Exception as e:  # noqa: BLE001
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        return f"loading {path} failed: {type(e).__name__}: {e}"


def trl_style_grpo(logp, old, ref, adv, mask, beta, eps_low=0.2, eps_high=0.28):
    """TRL 1.16's DAPO loss in torch ops (`GRPOTrainer._compute_loss`, one process, no accumulation)."""
    coef = torch.exp(logp - old)
    clipped = torch.clamp(coef, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(coef * adv[:, None], clipped * adv[:, None])
    if beta:
        per_token = per_token + beta * (torch.exp(ref - logp) - (ref - logp) - 1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def grpo_head(h):
    """The GRPO loss from hidden states: head + loss + backward."""
    sec = "GRPO loss from hidden states, forward+backward"
    dev = h.device
    b, t, hid, v = (4, 8, 32, 100) if h.smoke else (16, 1024, 1536, 151936)
    gen = torch.Generator().manual_seed(7)
    w = (torch.randn(v, hid, generator=gen) * 0.02).bfloat16().to(dev).requires_grad_()
    x = torch.randn(b * t, hid, generator=gen).bfloat16().to(dev).requires_grad_()
    ids = torch.randint(0, v, (b, t), generator=gen).to(dev)
    mask = (torch.rand(b, t, generator=gen) < 0.9).float().to(dev)
    old = (-torch.rand(b, t, generator=gen) * 3 - 9).to(dev)
    ref = old + 0.05 * torch.randn(b, t, generator=gen).to(dev)
    adv = torch.randn(b, generator=gen).to(dev)
    beta = 0.04
    shape = f"B={b} T={t} H={hid} V={v}"
    fl = 2 * b * t * hid * v
    tf = tflops
    step = backward_step(x, w)

    def ours():
        s = pk.linear_token_stats(x, w, ids.reshape(-1), entropy=True)
        logp, ent = s.logp.view(b, t), s.entropy.view(b, t)
        return pk.grpo_loss(logp, adv, mask, old, ref, loss_type="dapo", beta=beta, epsilon_high=0.28,
                            entropy=ent, max_completion_length=t)[0]
    floor = 3 * fl / h.gemm_rate * 1e3 if h.gemm_rate else None
    h.run(sec, shape, "pref-kernels fused head (+entropy) + grpo_loss", step(ours), extra=tf(4 * fl), floor_ms=floor)

    def ours_one_call():
        return pk.linear_grpo_loss(x.view(b, t, hid), w, ids, adv, mask, old, ref, loss_type="dapo", beta=beta,
                                   epsilon_high=0.28, max_completion_length=t, compute_entropy=True)[0]
    h.run(sec, shape, "pref-kernels linear_grpo_loss (one call, 3 GEMMs)", step(ours_one_call), extra=tf(3 * fl),
          floor_ms=floor)
    trl_head = trl_chunked_logprob()
    if isinstance(trl_head, str):
        h.skip(sec, shape, "TRL 1.16 fused head + TRL-style loss", trl_head)
    else:
        def trl_step():
            logp, _ent, *_ = trl_head.apply(x, w, None, ids.reshape(-1), 1.0, 4096, None, 1.0, ("log_probs", "entropy"))
            return trl_style_grpo(logp.view(b, t), old, ref, adv, mask, beta)
        h.run(sec, shape, "TRL 1.16 fused head (+entropy) + TRL-style loss", step(trl_step), extra=tf(4 * fl))
    if dev.type != "cuda":
        h.skip(sec, shape, "Liger FusedLinearGRPO", "Triton kernels need a CUDA device")
        return
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
        liger = LigerFusedLinearGRPOLoss(beta=beta, loss_type="dapo", epsilon_low=0.2, epsilon_high=0.28,
                                         max_completion_length=t)
        xb = x.view(b, t, hid)
        h.run(sec, shape, "Liger FusedLinearGRPO",
              step(lambda: (lambda o: o[0] if isinstance(o, tuple) else o)(
                  liger(xb, w, ids, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old))),
              extra=tf(3 * fl))
    except Exception as e:  # noqa: BLE001
        h.skip(sec, shape, "Liger FusedLinearGRPO", str(e))


class Qwen2Shaped(torch.nn.Module):
    """A Qwen2-shaped decoder in plain PyTorch (RMSNorm, RoPE, GQA attention with q/k/v biases,
    SwiGLU MLP), random weights; `attend(q, k, v)` ([T, Hq, d], [T, Hkv, d] -> [T, Hq, d]) and the
    position ids come from the caller, so one module serves both layouts."""

    def __init__(self, layers, hid, mlp, hq, hkv, d, vocab, dtype, device):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        lin = lambda i, o, bias=False: torch.nn.Linear(i, o, bias=bias, dtype=dtype, device=device)  # noqa: E731
        self.embed = torch.nn.Embedding(vocab, hid, dtype=dtype, device=device)
        self.layers = torch.nn.ModuleList()
        for _ in range(layers):
            m = torch.nn.Module()
            m.q, m.k, m.v, m.o = lin(hid, hq * d, True), lin(hid, hkv * d, True), lin(hid, hkv * d, True), lin(hq * d, hid)
            m.gate, m.up, m.down = lin(hid, mlp), lin(hid, mlp), lin(mlp, hid)
            m.n1 = torch.nn.Parameter(torch.ones(hid, dtype=dtype, device=device))
            m.n2 = torch.nn.Parameter(torch.ones(hid, dtype=dtype, device=device))
            self.layers.append(m)
        self.norm = torch.nn.Parameter(torch.ones(hid, dtype=dtype, device=device))
        self.head = lin(hid, vocab)
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        self.hq, self.hkv, self.d = hq, hkv, d

    @staticmethod
    def rms(x, w):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * w

    def rope(self, x, pos):
        half = self.d // 2
        inv = 1e6 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
        ang = pos[:, None].float() * inv[None]
        cos, sin = ang.cos()[:, None].to(x.dtype), ang.sin()[:, None].to(x.dtype)
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    def forward(self, ids, pos, attend):
        x = self.embed(ids)
        t = ids.shape[0]
        for m in self.layers:
            y = self.rms(x, m.n1)
            q = self.rope(m.q(y).view(t, self.hq, self.d), pos)
            k = self.rope(m.k(y).view(t, self.hkv, self.d), pos)
            v = m.v(y).view(t, self.hkv, self.d)
            x = x + m.o(attend(q.contiguous(), k.contiguous(), v.contiguous()).reshape(t, -1))
            y = self.rms(x, m.n2)
            x = x + m.down(torch.nn.functional.silu(m.gate(y)) * m.up(y))
        return self.rms(x, self.norm)


def grpo_model_step(h):
    """One GRPO step (forward, fused head, fused loss, backward) through a Qwen2-1.5B-shaped decoder,
    duplicated layout vs prompt-once."""
    sec = "GRPO step, Qwen2-1.5B-shaped decoder, one group"
    dev = h.device
    if h.smoke:
        cfg, (p_len, c_len, g_n) = dict(layers=2, hid=64, mlp=128, hq=2, hkv=1, d=64, vocab=100), (8, 6, 3)
    else:
        cfg, (p_len, c_len, g_n) = dict(layers=28, hid=1536, mlp=8960, hq=12, hkv=2, d=128, vocab=151936), (512, 1024, 8)
    shape = f"G={g_n} prompt={p_len} completion={c_len} (Qwen2-1.5B shape)" if not h.smoke else f"G={g_n} P={p_len} C={c_len}"
    try:
        model = Qwen2Shaped(dtype=torch.bfloat16, device=dev, **cfg)
    except Exception as e:  # noqa: BLE001
        h.skip(sec, shape, "both layouts", f"model: {type(e).__name__}: {e}")
        return
    gen = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, cfg["vocab"], (p_len,), generator=gen).to(dev)
    comps = torch.randint(0, cfg["vocab"], (g_n, c_len), generator=gen).to(dev)
    adv = torch.randn(g_n, generator=gen).to(dev)
    old = (-torch.rand(g_n, c_len, generator=gen) * 3 - 9).to(dev)
    rep = 2 * g_n * (p_len + c_len) * 6 * sum(p.numel() for p in model.parameters())
    tf = lambda ms: f"{rep / 2 / ms / 1e9:.0f} model TFLOP/s (duplicated-layout FLOPs)"  # noqa: E731

    def loss_of(logp):
        return pk.grpo_loss(logp.view(g_n, c_len), adv, None, old, loss_type="dapo", epsilon_high=0.28,
                            max_completion_length=c_len)[0]

    def duplicated():
        ids = torch.cat([prompt.expand(g_n, -1), comps], 1)  # [G, P + C]
        pos = torch.arange(p_len + c_len, device=dev)

        def sdpa(q, k, v):
            t = q.shape[0] // g_n
            qb, kb, vb = (z.view(g_n, t, z.shape[1], z.shape[2]).transpose(1, 2) for z in (q, k, v))
            o = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=True)
            return o.transpose(1, 2).reshape(q.shape)
        hidden = model(ids.reshape(-1), pos.repeat(g_n), sdpa).view(g_n, p_len + c_len, -1)
        rows = hidden[:, p_len - 1:-1].reshape(-1, cfg["hid"])
        return loss_of(pk.linear_token_logprobs(rows, model.head.weight, comps.reshape(-1)))

    layout = pk.prefix_layout([(p_len, [c_len] * g_n)], dev)

    def prompt_once():
        ids = torch.cat([prompt, comps.reshape(-1)])
        pos = torch.cat([torch.arange(p_len, device=dev),
                         (p_len + torch.arange(c_len, device=dev)).repeat(g_n)])
        hidden = model(ids, pos, lambda q, k, v: pk.shared_prefix_attention(q, k, v, layout))
        comp_h = hidden[p_len:].view(g_n, c_len, -1)
        rows = torch.cat([hidden[p_len - 1].expand(g_n, 1, -1), comp_h[:, :-1]], 1).reshape(-1, cfg["hid"])
        return loss_of(pk.linear_token_logprobs(rows, model.head.weight, comps.reshape(-1)))

    def step(fn):
        def run():
            model.zero_grad(set_to_none=True)
            out = fn()
            out.backward()
            return out
        return lambda i: run
    ref = {}
    h.run(sec, shape, f"duplicated layout, SDPA ({g_n * (p_len + c_len)} tokens)", step(duplicated), extra=tf,
          check=lambda out: ref.setdefault("loss", out.detach().float()))
    h.run(sec, shape, f"prompt-once, pref-kernels shared-prefix ({p_len + g_n * c_len} tokens)", step(prompt_once),
          extra=tf, check=lambda out: None if "loss" not in ref else torch.testing.assert_close(
              out.detach().float(), ref["loss"], rtol=2e-2, atol=2e-2))
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()


SECTIONS = {"token_logprobs": token_logprobs, "dpo_step": dpo_step, "attention": attention,
            "linear_head": linear_head, "grpo_head": grpo_head, "grpo_model_step": grpo_model_step}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (the default without a GPU)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--reps", type=int, default=None)
    a = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = a.smoke or device.type != "cuda"
    h = Harness(device, smoke, a.reps or (5 if smoke else 20))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu-emulator"
    if device.type == "cuda":
        src = torch.empty(2 ** 31, dtype=torch.bfloat16, device="cuda").normal_()
        dst = torch.empty_like(src)
        med, _, _ = h.time([lambda: dst.copy_(src)])
        h.copy_bw = 2 * src.numel() * 2 / (med / 1e3)
        del src, dst
        # The GEMM floor of the fused-head rows: a large square bf16 matmul, f32 accumulation.
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        med, _, _ = h.time([lambda: a @ b])
        h.gemm_rate = 2 * 8192 ** 3 / (med / 1e3)
        del a, b
        torch.cuda.empty_cache()
    os.makedirs(a.out, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    only = a.only.split(",")
    tag = "" if only == list(SECTIONS) else "-" + "-".join(only)
    prefix = os.path.join(a.out, f"{stamp}-{name.replace(' ', '_')}-torch{tag}{'-smoke' if smoke else ''}")
    title = (f"pref-kernels vs peers, {stamp}, {name}, torch {torch.__version__}, backend {pk.backend(device)}"
             f"{' (smoke: tiny shapes, timings meaningless)' if smoke else ''}")

    def table():
        text = h.markdown(title)
        if h.copy_bw:
            text = text.replace("\n\n", f"\n\nDevice-to-device copy: {h.copy_bw / 1e12:.2f} TB/s (read + write), "
                                "the floor of the memory-bound rows; bf16 GEMM (8192^3, torch.mm): "
                                f"{h.gemm_rate / 1e12:.0f} TFLOP/s, the floor of the fused-head rows.\n\n", 1)
        return text
    for s in only:
        SECTIONS[s](h)
        # Written after every section: a run stopped at its time cap still leaves what it measured.
        with open(prefix + ".md", "w") as f:
            f.write(table())
    text = table()
    plots = h.plots(prefix)
    text += "\n" + "\n".join(f"- {p}" for p in plots) + "\n"
    with open(prefix + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"written: {prefix}.md")
    return prefix


if __name__ == "__main__":
    main()
