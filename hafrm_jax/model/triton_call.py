"""What the library's Pallas kernels share (head_kernel.py, mlp_kernel.py): the call that runs a
kernel as Triton on NVIDIA GPUs and through Pallas' interpreter elsewhere, and the mapping of a
row-wise kernel over the devices of a mesh.

A pallas_call has no partitioning rule: left to XLA on a mesh it would run every device on the
whole batch. The library's kernels work on rows (tokens) independently, so data parallelism and
FSDP map them with shard_map (`on_row_shards`); a mesh that splits anything else (tensor
parallelism) is refused, naming the option that chose the kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jax.sharding import PartitionSpec

from hafrm_jax.sharding import batch_mesh_axes


MIN_BLOCK = 16  # Triton's smallest matmul tile along any axis
WARPS = (1, 2, 4, 8, 16)


def check_launch(kernel: str, blocks: dict[str, int], warps: int | None, stages: int) -> None:
    """Refuses block sizes Triton cannot tile (powers of two >= 16), warps it cannot launch and
    fewer than one pipelining stage; `kernel` names the kernel in the message."""
    for name, value in blocks.items():
        if value < MIN_BLOCK or value & (value - 1):
            raise ValueError(f"{kernel} kernel block {name}={value} must be a power of two "
                             f">= {MIN_BLOCK} (Triton's tiles)")
    if warps is not None and warps not in WARPS:
        raise ValueError(f"{kernel} kernel warps={warps} must be 1, 2, 4, 8 or 16")
    if stages < 1:
        raise ValueError(f"{kernel} kernel stages={stages} must be >= 1")


def parse_tile(kernel: str, tile: str, axes: str) -> list[int]:
    """The three block sizes of a tile written like "128x128x64", in the order `axes` names them
    (e.g. "rows x vocab x depth"), for the message."""
    parts = tile.split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{kernel} kernel tile {tile!r} must be {axes}, e.g. 128x128x64")
    return [int(p) for p in parts]


def check_whole_tiles(option: str, sizes: dict[str, int]) -> None:
    """Each named axis size a multiple of MIN_BLOCK, or the option that chose the kernel is
    refused, naming the other."""
    for name, size in sizes.items():
        if size % MIN_BLOCK:
            raise ValueError(f"{option}='pallas' needs a {name} that is a multiple of "
                             f"{MIN_BLOCK}, got {size}; use {option}='xla'")


def dividing_block(size: int, block: int) -> int:
    """The largest power of two <= block dividing size; 0 where not even MIN_BLOCK does."""
    while block >= MIN_BLOCK and size % block:
        block //= 2
    return block if block >= MIN_BLOCK else 0


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_rows(x: jax.Array, rows: int) -> jax.Array:
    """x [n, ...] with zero rows appended up to `rows`."""
    pad = rows - x.shape[0]
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x


def whole_array(shape: tuple[int, ...]) -> pl.BlockSpec:
    """The whole array to every program of a 2-D grid (the kernel slices it itself)."""
    return pl.BlockSpec(shape, lambda i, j: (0,) * len(shape))


def triton_call(kernel, grid, in_specs, out_specs, out_shape, *, warps: int, stages: int,
                name: str):
    """The kernel as Triton on CUDA and through Pallas' interpreter on any other platform
    (`lax.platform_dependent` picks when the program is lowered: CPU tests run the very same
    kernel body, slowly)."""
    def build(interpret: bool):
        return pl.pallas_call(
            kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
            compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages),
            interpret=interpret, name=name)

    return lambda *args: jax.lax.platform_dependent(*args, cuda=build(False),
                                                    default=build(True))


def check_backend(option: str) -> None:
    """A TPU has no Triton, and the interpreter would be very slow there."""
    if jax.default_backend() == "tpu":
        raise ValueError(f"{option}='pallas' is a Triton kernel for NVIDIA GPUs; use "
                         f"{option}='xla' on TPUs")


def on_row_shards(fn, row_args, shared_args, row_outputs: int, summed_outputs: int = 0, *,
                  option: str):
    """fn(*row_args, *shared_args) on each device's share of the rows, where the mesh splits the
    batch (the rules' "act_batch" axes); shared_args whole on every device (a weight sharded
    over fsdp is gathered, as XLA's matmul would). fn's first `row_outputs` results are split by
    rows like the inputs, the next `summed_outputs` are summed over the devices. `option`: the
    config field that chose the kernel, for the refusal."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(*row_args, *shared_args)
    batch_axes = batch_mesh_axes()
    others = {name: size for name, size in mesh.shape.items()
              if name not in batch_axes and size > 1}
    if not batch_axes or others:
        raise ValueError(
            f"{option}='pallas' splits the batch over the mesh (data parallelism, FSDP) "
            f"and nothing else; this mesh also splits {others or 'its axes'} with batch axes "
            f"{batch_axes or 'none (no logical-axis rules in force)'}: use {option}='xla'")
    rows_spec = PartitionSpec(batch_axes)

    def per_device(*args):
        outputs = fn(*args)
        return (*outputs[:row_outputs],
                *(jax.lax.psum(x, batch_axes) for x in outputs[row_outputs:]))

    return jax.shard_map(
        per_device, mesh=mesh,
        in_specs=(rows_spec,) * len(row_args) + (PartitionSpec(),) * len(shared_args),
        out_specs=(rows_spec,) * row_outputs + (PartitionSpec(),) * summed_outputs,
        check_vma=False)(*row_args, *shared_args)
