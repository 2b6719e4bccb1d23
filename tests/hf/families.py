"""Tiny random-weight Hugging Face models of every supported family, built with PyTorch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need the [parity] extra (CPU torch)")
transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
              bos_token_id=2)
# Each family with the features that set it apart switched on; sequences of 10 tokens are longer
# than the sliding windows of 4, so windowed layers are exercised.
FAMILIES = {
    "llama": ("LlamaConfig", dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}, max_position_embeddings=64)),
    "mistral": ("MistralConfig", dict(sliding_window=4, hidden_act="gelu")),  # not SiLU
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(head_dim=16)),
    "gemma": ("GemmaConfig", dict(head_dim=8)),
    "gemma2": ("Gemma2Config", dict(head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
                                    attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "phi": ("PhiConfig", dict(partial_rotary_factor=0.5)),
}


def hf_model(family: str, head: str = "causal", seed: int = 0):
    """A random tiny `<Family>ForCausalLM` (or ForSequenceClassification), weights perturbed so
    that zero-initialised norms and biases are exercised too."""
    config_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**COMMON, **extra, attn_implementation="eager",
                                                num_labels=1)
    torch.manual_seed(seed)
    cls = (transformers.AutoModelForCausalLM if head == "causal"
           else transformers.AutoModelForSequenceClassification)
    model = cls.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def padded_batch(seed: int = 0, side: str = "right"):
    """ids, mask [3, 10]: one full row, two shorter rows padded on `side`; each ends in EOS."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, COMMON["vocab_size"], size=(3, 10)).astype(np.int64)
    mask = np.ones((3, 10), np.int64)
    for row, length in ((1, 7), (2, 4)):
        if side == "right":
            ids[row, length - 1] = COMMON["eos_token_id"]
            ids[row, length:], mask[row, length:] = COMMON["pad_token_id"], 0
        else:
            ids[row, -1] = COMMON["eos_token_id"]
            ids[row, :10 - length], mask[row, :10 - length] = COMMON["pad_token_id"], 0
    ids[0, -1] = COMMON["eos_token_id"]
    return ids, mask


def hf_positions(mask: np.ndarray) -> np.ndarray:
    """Position ids that skip left padding, as generation code passes them to transformers."""
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
