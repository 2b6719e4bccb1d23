"""LoRA adapters exported in PEFT's layout load with `peft` and score like our model; the
merged export scores the same through transformers."""

import dataclasses

import jax
import numpy as np
import pytest

from tests.hf.families import hf_model, padded_batch, torch, transformers

from hafrm_jax.data.synthetic import build_tokenizer
from hafrm_jax.hf.checkpoint import pretrained_model_config
from hafrm_jax.hf.export import export_checkpoint, export_peft_adapters
from hafrm_jax.model.config import LoraConfig
from hafrm_jax.model.hybrid import HybridRewardModel
from hafrm_jax.model.lora import merge_adapters, model_variables, split_trainable
from hafrm_jax.sharding import DEFAULT_RULES, make_mesh
from hafrm_jax.train.state import init_adapters, init_params

peft = pytest.importorskip("peft", reason="needs peft (the [parity] extra)")


@pytest.mark.parametrize("family, targets", [("llama", "mlp"), ("phi", "all")])
def test_peft_and_merged_exports(tmp_path, family, targets):
    hf_model(family).save_pretrained(tmp_path / "base")
    config = pretrained_model_config(str(tmp_path / "base"),
                                     lora=LoraConfig(rank=4, alpha=8.0,
                                                     targets=LoraConfig.parse_targets(targets)))
    mesh = make_mesh()
    params, _ = init_params(config, 0, mesh, DEFAULT_RULES, str(tmp_path / "base"))
    adapters, _ = init_adapters(config, 0, mesh, DEFAULT_RULES)
    leaves, tree = jax.tree_util.tree_flatten(adapters)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    adapters = jax.tree_util.tree_unflatten(
        tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    params["reward_head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(2), (32, 1))
    trainable, frozen = split_trainable(params, adapters, train_lm_head=False)
    ids, mask = padded_batch(side="right")
    ours = np.asarray(HybridRewardModel(config).apply(model_variables(trainable, frozen), ids,
                                                      mask, method="rewards"))
    tokenizer = build_tokenizer()

    export_peft_adapters(trainable, config, tokenizer, str(tmp_path / "adapters"),
                         base_name_or_path=str(tmp_path / "base"))
    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", num_labels=1, pad_token_id=0, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, tmp_path / "adapters").eval()
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(theirs[:, 0].numpy(), ours, rtol=1e-4, atol=1e-5)

    merged = merge_adapters({**frozen, "reward_head": trainable["reward_head"]}, adapters, config)
    export_checkpoint(merged, dataclasses.replace(config, lora=None), tokenizer,
                      str(tmp_path / "merged"))
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "merged", attn_implementation="eager").eval()
    with torch.no_grad():
        merged_rewards = exported(input_ids=torch.tensor(ids),
                                  attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(merged_rewards[:, 0].numpy(), ours, rtol=1e-4, atol=1e-5)
