"""Builders shared by tests: JSONL data files, a real subword tokenizer and a tiny
pretrained-style checkpoint, made offline from the HH-RLHF sample and our own exporter; and
bench/gpu_compile.py's output."""

import gzip
import json
import pathlib
import subprocess
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tests.conftest import SHARED_DATA

HH_FILE = SHARED_DATA / "hh-rlhf" / "harmless-base-test-1800.jsonl.gz"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_jsonl(path: pathlib.Path, records) -> str:
    """A JSONL file (gzipped for a .gz name) of `records`: dicts are dumped, bytes written as
    they are (a malformed line). Returns the path as a string, as configs hold it."""
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in records]
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)
    return str(path)


def hh_records() -> list[dict]:
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def bpe_tokenizer(texts, vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, with EOS, pad and ChatML special tokens."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[
        "<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                   pad_token="<pad>")


def tiny_checkpoint(directory: str, tokenizer, family_preset: str = "tiny", seed: int = 0) -> str:
    """A random-weight Hugging Face checkpoint (CausalLM + tokenizer) written by our exporter."""
    from hafrm_jax.hf.export import export_checkpoint
    from hafrm_jax.model.config import preset
    from hafrm_jax.sharding import DEFAULT_RULES, make_mesh
    from hafrm_jax.train.state import init_params

    config = preset(family_preset, vocab_size=len(tokenizer))
    params, _ = init_params(config, seed, make_mesh(), DEFAULT_RULES)
    return export_checkpoint(params, config, tokenizer, directory, head="policy")


def dot_operand_types(fn, *args) -> list[tuple[str, str]]:
    """(lhs, rhs) operand types of every dot_general in fn's lowered program, e.g.
    ("tensor<8x16xbf16>", "tensor<16x40xbf16>"): what precision the matmuls really run in."""
    import re

    import jax

    hlo = jax.jit(fn).lower(*args).as_text()
    pattern = re.compile(r"stablehlo\.dot_general.*:\s*\((tensor<[^>]*>), (tensor<[^>]*>)\)")
    return [m.groups() for m in map(pattern.search, hlo.splitlines()) if m]


def gpu_compile(*flags: str) -> str:
    """stdout of `python bench/gpu_compile.py *flags` from the repository root (a subprocess:
    its JAX_PLATFORMS and compile-only setup stay out of the test's process)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "bench/gpu_compile.py", *flags], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout
