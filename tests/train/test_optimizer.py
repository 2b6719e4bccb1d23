"""AdamW's weight decay: on weight matrices and the embedding, not on norms' scales or biases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hafrm_jax.config_schema import default_config
from hafrm_jax.model.config import preset
from hafrm_jax.train.optimizer import decay_mask, make_optimizer
from hafrm_jax.train.state import abstract_params


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "phi-2"])
def test_decay_mask_by_leaf_name_not_rank(name):
    """Stacked over layers, a norm's scale is [layers, hidden] and a q bias [layers, heads,
    head_dim]: rank says nothing; the leaf's name does."""
    params = abstract_params(preset(name, num_layers=2))
    for path, decayed in jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]:
        leaf = path[-1].key
        assert decayed == (leaf in ("kernel", "embedding")), jax.tree_util.keystr(path)


def test_an_update_decays_kernels_and_leaves_norm_scales_alone():
    optim = default_config().optim
    optim.weight_decay, optim.learning_rate, optim.warmup_steps = 0.1, 1e-2, 0
    optimizer, _ = make_optimizer(optim, total_steps=10)
    params = {"layers": {"norm": {"scale": jnp.ones((2, 3))},
                         "proj": {"kernel": jnp.ones((2, 3, 3)), "bias": jnp.ones((2, 3))}},
              "lora": {"proj_lora": {"a": jnp.ones((2, 3, 1)), "b": jnp.ones((2, 1, 3))}}}
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    new = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
    np.testing.assert_array_equal(new["layers"]["norm"]["scale"], 1.0)
    np.testing.assert_array_equal(new["layers"]["proj"]["bias"], 1.0)
    np.testing.assert_allclose(new["layers"]["proj"]["kernel"], 1 - 1e-2 * 0.1, rtol=1e-6)
    np.testing.assert_allclose(new["lora"]["proj_lora"]["a"], 1 - 1e-2 * 0.1, rtol=1e-6)
