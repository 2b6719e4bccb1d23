"""Device mesh, logical-axis rules and the shardings of params, optimizer state and batches.

Model code names every weight's axes ("embed", "mlp", "heads", ...) and every activation's
("act_batch", "act_length", ...). Rules map those names onto the mesh axes data / fsdp / tensor,
as in MaxText. Arrays are created directly with their sharding (`jit(init, out_shardings=...)`),
so no device ever holds the whole model.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Any]]

# logical name -> mesh axis (or axes, or None for replicated)
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # weights
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_head_dim", None),
    ("act_vocab", "tensor"),
)


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolve one -1 entry to fill the devices; checks that the product is the device count."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} "
                         f"tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices cannot be split into mesh {sizes}")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = "
                         f"{int(np.prod(sizes))} devices, but {num_devices} are present")
    return tuple(sizes)


def device_description() -> str:
    """The accelerator a run used, for its results: e.g. "NVIDIA H100 80GB HBM3 x1"."""
    return f"{jax.devices()[0].device_kind} x{jax.device_count()}"


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def _fits(dim: int, axes, mesh: Mesh) -> bool:
    names = axes if isinstance(axes, tuple) else (axes,)
    return dim % int(np.prod([mesh.shape[n] for n in names])) == 0


def logical_to_sharding(abstract_boxed, mesh: Mesh, rules: Rules):
    """NamedShardings for a pytree of `nn.Partitioned` shape structs (from `jax.eval_shape`).

    A dimension that its mesh axes do not divide (2 KV heads over 4-way tensor parallelism, say)
    is replicated instead, and logged: correct, if less memory-efficient.
    """
    specs = nn.get_partition_spec(abstract_boxed)
    shapes = nn.meta.unbox(abstract_boxed)

    def to_sharding(spec, shape):
        mesh_spec = nn.logical_to_mesh_axes(spec, rules) if spec is not None else PartitionSpec()
        fitted = []
        for dim, axes in zip(shape.shape, tuple(mesh_spec) + (None,) * len(shape.shape)):
            if axes is not None and not _fits(dim, axes, mesh):
                log.info("replicating a dimension of %d (shape %s): mesh axes %s do not divide it",
                         dim, shape.shape, axes)
                axes = None
            fitted.append(axes)
        return NamedSharding(mesh, PartitionSpec(*fitted))

    return jax.tree_util.tree_map(to_sharding, specs, shapes,
                                  is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


def traced_under_rules(fn: Callable, rules: Rules) -> Callable:
    """`fn`, traced with the logical-axis `rules` in force: the model's activation constraints
    (`nn.with_logical_constraint`) then pin activations to their mesh axes. Flax makes them
    no-ops where no rules are set, and with params sharded over fsdp XLA then sharded the
    activations' embedding axis instead of their batch, gathering whole-batch activations on
    every device. Jit the result and call it under `jax.set_mesh(mesh)`."""

    @functools.wraps(fn)
    def with_rules(*args, **kwargs):
        with nn.logical_axis_rules(rules):
            return fn(*args, **kwargs)

    return with_rules


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Batches are split along their leading (pairs) axis over the data-parallel mesh axes."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("act_batch",), rules))


def batch_mesh_axes(rules: Rules | None = None) -> tuple[str, ...]:
    """The mesh axes that split the batch ("act_batch") under `rules`; None: the rules in force
    (`nn.logical_axis_rules`, as `traced_under_rules` sets them while tracing)."""
    axes = nn.logical_to_mesh_axes(("act_batch",), rules)[0]
    if axes is None:
        return ()
    return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
    return int(np.prod([mesh.shape[n] for n in batch_mesh_axes(rules)]))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


SEQUENCE_KEYS = ("input_ids", "attention_mask", "response_mask")  # [pairs, 2, seq]


def _common_length(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pad every host's sequences to the longest on any host: one global array, one shape."""
    from jax.experimental import multihost_utils

    seq = batch["input_ids"].shape[-1]
    longest = int(np.max(multihost_utils.process_allgather(np.asarray(seq, np.int32))))
    if longest == seq:
        return batch
    pad = [(0, 0)] * (batch["input_ids"].ndim - 1) + [(0, longest - seq)]
    return {k: np.pad(v, pad) if k in SEQUENCE_KEYS else v for k, v in batch.items()}


def host_batch_to_global(batch: dict[str, np.ndarray], sharding: NamedSharding):
    """Place a host's share of a batch (its rows) into global arrays sharded over the mesh.

    On one host the share is the whole batch. On several, each process passes only the rows it
    read (of one shape on every host); the global batch is their concatenation in process order.
    """
    if jax.process_count() > 1:
        batch = _common_length(batch)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
