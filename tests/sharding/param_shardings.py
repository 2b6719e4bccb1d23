"""The sharding of every parameter, as the rules map its logical axes (8 CPU devices)."""

import json

import jax

from hafrm_jax.model.config import preset
from hafrm_jax.sharding import DEFAULT_RULES, make_mesh
from hafrm_jax.train.state import init_params

out = {}
for shape in [(2, 2, 2), (1, 2, 4)]:
    mesh = make_mesh(*shape)
    params, _ = init_params(preset("tiny", qkv_bias=True), 0, mesh, DEFAULT_RULES)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    out["x".join(map(str, shape))] = {
        "/".join(k.key for k in path): [None if a is None else a for a in leaf.sharding.spec]
        for path, leaf in flat}
# rules from the config override the defaults: here the embedding dimension stays whole
mesh = make_mesh(1, 8, 1)
custom = tuple((name, None) if name == "embed" else (name, axes) for name, axes in DEFAULT_RULES)
params, shardings = init_params(preset("tiny"), 0, mesh, custom)
out["custom_rules_1x8x1"] = list(params["backbone"]["embed_tokens"]["embedding"].sharding.spec)
# the optimizer's moments are sharded like their params
import ml_collections  # noqa: E402

from hafrm_jax.train.optimizer import make_optimizer  # noqa: E402
from hafrm_jax.train.state import create_train_state  # noqa: E402

optim = ml_collections.ConfigDict(dict(learning_rate=1e-3, schedule="constant", warmup_steps=0,
                                       end_learning_rate_factor=1.0, weight_decay=0.0, b1=0.9,
                                       b2=0.99, eps=1e-8, max_grad_norm=1.0))
mesh = make_mesh(2, 2, 2)
params, shardings = init_params(preset("tiny"), 0, mesh, DEFAULT_RULES)
state, _ = create_train_state(params, shardings, make_optimizer(optim, 10)[0], 0, mesh)
moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim > 1]
out["moment_specs_match"] = all(
    any(m.sharding.spec == p.sharding.spec and m.shape == p.shape
        for p in jax.tree_util.tree_leaves(params)) for m in moments) and len(moments) > 0
print(json.dumps(out))
