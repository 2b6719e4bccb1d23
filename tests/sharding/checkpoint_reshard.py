"""Train on one mesh, restore the checkpoint on another mesh (or one device) of this process.

usage: checkpoint_reshard.py WORKDIR train|restore DATA FSDP TENSOR
"""

import json
import sys

import jax
import numpy as np

from configs.default import get_config

from hafrm_jax.sharding import make_mesh
from hafrm_jax.train.loop import train_and_evaluate
from hafrm_jax.workdir import load_run

workdir, mode = sys.argv[1], sys.argv[2]
shape = tuple(int(a) for a in sys.argv[3:6])


def digest(params):
    leaves = jax.tree_util.tree_leaves(jax.device_get(params))
    return [float(np.sum(np.asarray(x, np.float64) * (1 + np.arange(x.size).reshape(x.shape) % 7)))
            for x in leaves]


if mode == "train":
    config = get_config()
    config.model.num_layers, config.model.hidden_size, config.model.intermediate_size = 1, 32, 64
    config.data.num_train, config.data.num_validation, config.data.num_test = 64, 16, 16
    config.train.steps, config.train.batch_size, config.train.eval_every = 3, 8, 3
    config.train.eval_batch_size = 16
    config.optim.warmup_steps = 1
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = shape
    result = train_and_evaluate(config, workdir)
    params = result.state.params
    specs = {"/".join(k.key for k in p): list(x.sharding.spec)
             for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    print(json.dumps({"digest": digest(params), "q_proj": specs["backbone/layers/self_attn/q_proj/kernel"]}))
else:
    run = load_run(workdir, "latest", mesh=make_mesh(*shape, devices=jax.devices()[:int(np.prod(shape))]))
    specs = {"/".join(k.key for k in p): list(x.sharding.spec)
             for p, x in jax.tree_util.tree_flatten_with_path(run.params)[0]}
    print(json.dumps({"digest": digest(run.params), "step": run.step,
                      "q_proj": specs["backbone/layers/self_attn/q_proj/kernel"]}))
