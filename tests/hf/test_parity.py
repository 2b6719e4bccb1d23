"""Our imported model computes what transformers computes, for every supported family."""

import json

import numpy as np
import pytest

from tests.hf.families import FAMILIES, hf_model, hf_positions, padded_batch, torch

from hafrm_jax.hf.checkpoint import pretrained_model_config, resolve_checkpoint
from hafrm_jax.hf.config import UnsupportedModelError
from hafrm_jax.model.hybrid import HybridRewardModel
from hafrm_jax.sharding import DEFAULT_RULES, make_mesh
from hafrm_jax.train.state import init_params

RTOL = 1e-4  # float32, relative to the largest logit


def import_model(directory):
    config = pretrained_model_config(str(directory))
    params, _ = init_params(config, 0, make_mesh(), DEFAULT_RULES, str(directory))
    return config, params


def max_rel_err(ours, ref, mask):
    keep = mask.astype(bool)
    return float(np.abs(ours[keep] - ref[keep]).max() / np.abs(ref[keep]).max())


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("side", ["none", "right", "left"])
def test_logits_match_transformers(tmp_path, family, side):
    model = hf_model(family)
    model.save_pretrained(tmp_path)
    config, params = import_model(tmp_path)
    assert config.family == family
    ids, mask = padded_batch(side=side if side != "none" else "right")
    if side == "none":
        mask = np.ones_like(mask)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(hf_positions(mask))).logits.numpy()
    ours = np.asarray(HybridRewardModel(config).apply({"params": params}, ids, mask,
                                                      method="logits"))
    assert max_rel_err(ours, ref, mask) <= RTOL


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "phi"])
def test_sequence_classification_checkpoint_imports_its_score(tmp_path, family):
    """An existing HF reward model: its `score` becomes our reward head."""
    model = hf_model(family, head="classification")
    model.save_pretrained(tmp_path)
    config, params = import_model(tmp_path)
    ids, mask = padded_batch(side="right")
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, 0]
    ours = HybridRewardModel(config).apply({"params": params}, ids, mask, method="rewards")
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=RTOL, atol=1e-5)


def test_sharded_checkpoint_with_index(tmp_path):
    model = hf_model("llama")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    config, params = import_model(tmp_path)
    ids, mask = padded_batch()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = np.asarray(HybridRewardModel(config).apply({"params": params}, ids, mask,
                                                      method="logits"))
    assert max_rel_err(ours, ref, mask) <= RTOL


def test_unsupported_model_type_lists_the_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="supported model types: llama, mistral"):
        pretrained_model_config(str(tmp_path))


def test_an_activation_we_lack_is_refused_not_replaced(tmp_path):
    config = hf_model("llama").config
    config.hidden_act = "relu"
    config.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="hidden_act 'relu' is not supported"):
        pretrained_model_config(str(tmp_path))


def test_an_unsupported_rope_type_names_the_config_file(tmp_path):
    config = hf_model("llama").config
    config.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                              "original_max_position_embeddings": 64}
    config.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"config\.json: rope_type 'yarn'"):
        pretrained_model_config(str(tmp_path))


def test_a_hub_repo_with_only_pickle_weights_is_refused_with_the_reason(tmp_path, monkeypatch):
    import huggingface_hub

    def fake_download(name, allow_patterns):  # what the patterns let through: no weights
        hf_model("llama").config.save_pretrained(tmp_path)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files",
                        lambda name: ["config.json", "pytorch_model.bin"])
    with pytest.raises(FileNotFoundError, match="only PyTorch pickle weights "
                                                r"\(pytorch_model\.bin\), which are never"):
        resolve_checkpoint("someone/old-model")


def test_pickle_checkpoints_are_refused(tmp_path):
    hf_model("llama").config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="never loaded"):
        import_model(tmp_path)
