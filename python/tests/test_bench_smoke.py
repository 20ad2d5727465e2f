"""The same-run benchmark harness (bench/harness.py) in its CPU smoke mode: every section runs,
ours and the peers are timed (or listed as skipped with a reason, never dropped), and the
markdown table and the time plot are written."""
import importlib.util
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[2] / "bench" / "harness.py"


def test_harness_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("harness", HARNESS)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    prefix = harness.main(["--smoke", "--out", str(tmp_path), "--reps", "3"])
    table = Path(prefix + ".md").read_text()
    for section in ("token log-probs, forward", "token log-probs, forward+backward", "entropy, forward",
                    "DPO step from logits", "shared-prefix attention, forward+backward",
                    "fused LM head, forward+backward", "GRPO loss from hidden states, forward+backward",
                    "GRPO step, Qwen2-1.5B-shaped decoder, one group"):
        assert f"## {section}" in table, section
    for provider in ("pref-kernels", "PyTorch eager", "TRL selective_log_softmax", "torch.compile(eager)",
                     "TRL-style eager", "SDPA, duplicated prefix", "Liger", "FlexAttention", "cut_cross_entropy",
                     "TRL 1.16 fused head", "Liger FusedLinearGRPO", "duplicated layout, SDPA", "prompt-once"):
        assert provider in table, provider
    ours = [line for line in table.splitlines() if "| pref-kernels" in line or "| prompt-once" in line]
    assert ours and all("skipped" not in line for line in ours), "our rows must run, not skip"
    assert Path(prefix + "-logprobs-time.png").stat().st_size > 1000
