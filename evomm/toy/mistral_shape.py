"""Mistral-7B's architecture, at full width or shrunk, with random weights (benchmarks, tests).

Full width is Mistral-7B-v0.1's config (32 layers, hidden 4096, MLP 14336, 32 query and 8 KV
heads, vocabulary 32000). Shrunk keeps the depth, the vocabulary and the head layout's ratios but
narrows every layer, so a forward pass costs what a 7B model's per-layer Python and kernel-launch
overhead costs, without its arithmetic: at search batch sizes a GPU's decode step is bound by that
overhead and by memory, which is what the shrunk model measures on a CPU.
"""

from __future__ import annotations

import torch

FULL = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
            rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False)


def mistral_config(hidden_size: int | None = None, layers: int = 32, **overrides):
    """Mistral-7B's config; ``hidden_size`` (a multiple of 16) shrinks the width (MLP 3.5x, 4 heads
    of which 2 KV heads); ``overrides`` set any other field."""
    from transformers import MistralConfig

    fields = dict(FULL, num_hidden_layers=layers)
    if hidden_size is not None:
        fields.update(hidden_size=hidden_size, intermediate_size=int(3.5 * hidden_size),
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    fields.update(overrides)
    return MistralConfig(**fields)


def random_mistral(hidden_size: int | None = 64, layers: int = 32, seed: int = 0,
                   dtype: torch.dtype = torch.float32, device: str = "cpu", init_std: float = 0.3):
    """A random model of that shape, in eval mode. A wide ``init_std`` keeps greedy decoding from
    falling into a loop of one token and keeps the top logits apart (argmax is not float noise)."""
    from transformers import MistralForCausalLM

    config = mistral_config(hidden_size, layers, initializer_range=init_std)
    torch.manual_seed(seed)
    with torch.device(device):
        model = MistralForCausalLM(config).to(dtype)
    return model.eval()
