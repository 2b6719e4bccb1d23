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
print(json.dumps(out))
