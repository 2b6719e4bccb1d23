"""Loss and gradients of the hybrid objective on several meshes vs one device (8 CPU devices),
traced as the library traces them (under the logical-axis rules), and the compiled gradient's
per-device temporary memory on each mesh; the same with the library's Pallas kernels
(model.lm_head_kernel=pallas and model.mlp_kernel=pallas, run per device on its rows) on the
meshes they take."""

import dataclasses
import json

import jax
import numpy as np

from tests.conftest import make_pair_batch

from hafrm_jax.model.config import preset
from hafrm_jax.objective import LossConfig, ObjectiveConfig, hybrid_loss
from hafrm_jax.sharding import DEFAULT_RULES, batch_sharding, make_mesh, traced_under_rules
from hafrm_jax.train.state import init_params, param_shardings

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2), (2, 1, 4)]  # 2x1x4: 2 KV heads, 4-way
KERNEL_MESHES = [(8, 1, 1), (2, 4, 1)]  # the kernels split the batch, not the vocab or MLP

config = preset("tiny", qkv_bias=True)
loss_config = LossConfig(config, ObjectiveConfig("haf", reference="cached"))
batch = make_pair_batch(np.random.default_rng(0), pairs=8, seq=24, vocab=config.vocab_size)
batch["ref_logps"] = np.random.default_rng(1).normal(-40, 3, size=(8, 2)).astype(np.float32)
single_mesh = make_mesh(devices=jax.devices()[:1])
params, _ = init_params(config, 0, single_mesh, DEFAULT_RULES)
params = jax.device_get(params)
# the reward head starts at zero; make it random so that BT's gradients reach the backbone
params["reward_head"]["kernel"] = np.random.default_rng(2).normal(
    size=params["reward_head"]["kernel"].shape).astype(np.float32)


def loss_and_grads(mesh, loss_config=loss_config):
    shardings = param_shardings(config, mesh, DEFAULT_RULES)
    placed = jax.device_put(params, shardings)
    placed_batch = jax.device_put(batch, batch_sharding(mesh, DEFAULT_RULES))
    fn = jax.jit(traced_under_rules(
        jax.value_and_grad(lambda p, b: hybrid_loss(p, b, loss_config)[0]), DEFAULT_RULES))
    with jax.set_mesh(mesh):
        compiled = fn.lower(placed, placed_batch).compile()
        loss, grads = compiled(placed, placed_batch)
    return float(loss), jax.device_get(grads), compiled.memory_analysis().temp_size_in_bytes


def errors(loss, grads):
    diffs = [float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))
             for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads))]
    return {"loss_rel_err": abs(loss - ref_loss) / abs(ref_loss), "grad_max_rel_err": max(diffs)}


ref_loss, ref_grads, _ = loss_and_grads(single_mesh)
out = {"reference_loss": ref_loss, "meshes": {}, "kernel_meshes": {}}
for shape in MESHES:
    loss, grads, temp_bytes = loss_and_grads(make_mesh(*shape))
    out["meshes"]["x".join(map(str, shape))] = {**errors(loss, grads), "temp_bytes": temp_bytes}
kernel_config = LossConfig(
    dataclasses.replace(config, lm_head_kernel="pallas", mlp_kernel="pallas"),
    loss_config.objective)
for shape in KERNEL_MESHES:
    loss, grads, _ = loss_and_grads(make_mesh(*shape), kernel_config)
    out["kernel_meshes"]["x".join(map(str, shape))] = errors(loss, grads)
print(json.dumps(out))
