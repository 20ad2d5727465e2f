"""Tiny randomly initialised causal LMs and a word-level tokenizer built in the test (nothing
downloaded), shared by the TRL tests. The vocabulary size (25) differs from every other dimension
(hidden 32, MLP 64, sequence lengths < 25), so a `[..., V]` tensor is recognisable by its shape."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
import transformers
import tokenizers

WORDS = ["red", "green", "blue", "cat", "dog", "bird", "runs", "sits", "flies", "the", "a", "is", "very", "not",
         "and", "big", "small", "fast", "slow", "yes", "no"]


def tokenizer():
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                bos_token="<s>", eos_token="</s>")


def causal_lm(tok, family="llama", seed=0, head_dim=None):
    """A 2-layer Llama or Qwen2 (GQA, untied head; Qwen2 has q/k/v biases) with random weights;
    `head_dim` 64 for the shared-prefix attention kernel (its head dims are 64 and 128)."""
    torch.manual_seed(seed)
    extra = {} if head_dim is None else {"head_dim": head_dim}
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **extra,
                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  tie_word_embeddings=False)
    if family == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    if family == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    raise ValueError(family)


class LogitsGuard(TorchDispatchMode):
    """Records every tensor an op produces whose last dimension is the vocabulary and that spans at
    least `min_rows` rows: a logits tensor (or chunk of one)."""

    def __init__(self, vocab, min_rows=4):
        super().__init__()
        self.vocab, self.min_rows, self.seen = vocab, min_rows, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab \
                    and t.numel() >= self.min_rows * self.vocab:
                self.seen.append((str(func), tuple(t.shape)))
        return out
