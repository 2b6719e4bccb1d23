"""Export round trips: transformers loads our export unchanged and scores like our model."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.hf.families import FAMILIES, hf_model, padded_batch, torch, transformers
from tests.hf.test_parity import import_model

from hafrm_jax.data.synthetic import build_tokenizer
from hafrm_jax.hf.export import export_checkpoint
from hafrm_jax.model.hybrid import HybridRewardModel


def with_random_reward_head(params, seed=1):
    shape = params["reward_head"]["kernel"].shape
    params["reward_head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(seed), shape)
    return params


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reward_export_scores_like_our_model(tmp_path, family):
    hf_model(family).save_pretrained(tmp_path / "in")
    config, params = import_model(tmp_path / "in")
    params = with_random_reward_head(params)
    tokenizer = build_tokenizer()  # pad 0, eos 1: as the test batches
    export_checkpoint(params, config, tokenizer, str(tmp_path / "rm"))
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "rm", attn_implementation="eager").eval()
    assert type(exported).__name__.endswith("ForSequenceClassification")
    assert exported.config.num_labels == 1 and exported.config.pad_token_id == 0
    ids, mask = padded_batch(side="right")
    with torch.no_grad():
        ref = exported(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    ours = HybridRewardModel(config).apply({"params": params}, ids, mask, method="rewards")
    np.testing.assert_allclose(np.asarray(ours), ref[:, 0].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "phi"])
def test_policy_export_in_bfloat16(tmp_path, family):
    hf_model(family).save_pretrained(tmp_path / "in")
    config, params = import_model(tmp_path / "in")
    export_checkpoint(params, config, build_tokenizer(), str(tmp_path / "policy"), head="policy",
                      dtype="bfloat16")
    policy = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "policy", dtype=torch.float32, attn_implementation="eager").eval()
    assert json.loads((tmp_path / "policy" / "config.json").read_text())["dtype"] == "bfloat16"
    ids, mask = padded_batch()
    with torch.no_grad():
        ref = policy(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = np.asarray(HybridRewardModel(config).apply({"params": params}, ids, mask,
                                                      method="logits"))
    keep = mask.astype(bool)
    assert np.abs(ours[keep] - ref[keep]).max() / np.abs(ours[keep]).max() < 2e-2  # bf16 weights


def test_export_is_sharded_and_refuses_to_overwrite(tmp_path):
    hf_model("llama").save_pretrained(tmp_path / "in")
    config, params = import_model(tmp_path / "in")
    out = str(tmp_path / "rm")
    export_checkpoint(params, config, build_tokenizer(), out, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "rm" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert exported.config.architectures == ["LlamaForSequenceClassification"]
    with pytest.raises(FileExistsError):
        export_checkpoint(params, config, build_tokenizer(), out)
    assert not list(tmp_path.glob("*.tmp-export"))


@pytest.mark.slow
def test_train_then_export_cli(tmp_path):
    """python train.py -> python export.py -> transformers scores held-out pairs like we do."""
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    small = ["--config.train.steps=6", "--config.train.eval_every=3",
             "--config.data.num_train=64", "--config.data.num_validation=32",
             "--config.data.num_test=32", "--config.train.batch_size=8",
             "--config.optim.warmup_steps=1"]
    work, out = tmp_path / "run", tmp_path / "rm"
    for args in (["train.py", f"--workdir={work}", *small],
                 ["export.py", f"--workdir={work}", f"--out={out}"]):
        done = subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    from hafrm_jax.workdir import load_run
    from hafrm_jax.data.pipeline import load_records
    from hafrm_jax.data.tokenize import tokenize_pairs
    from hafrm_jax.data.batching import make_batch

    run = load_run(str(work))
    pairs = load_records(run.config)[0]["test"][:8]
    data, _ = tokenize_pairs(pairs, run.tokenizer, run.config.data.max_length,
                             run.config.data.max_prompt_length)
    batch = make_batch(data, np.arange(len(data)), 16)
    ids = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1])
    mask = batch["attention_mask"].reshape(ids.shape)
    ours = HybridRewardModel(run.model_config).apply({"params": run.params}, ids, mask,
                                                     method="rewards")
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.pad_token_id == run.tokenizer.pad_token_id
    with torch.no_grad():
        ref = exported(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(np.asarray(ours), ref[:, 0].numpy(), rtol=1e-4, atol=1e-5)
