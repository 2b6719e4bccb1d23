"""Hugging Face safetensors weights <-> our params pytree, streamed onto the mesh.

Every param maps to one Hugging Face tensor name (per layer for the stacked layer params):
linear `kernel`s are the transpose of HF's `weight` [out, in], split into (heads, head_dim)
where our layout has heads; norms' `scale`, embeddings and biases are HF's as they are.

Loading builds each param with `jax.make_array_from_callback`: every device shard reads only
the rows of the file that hold its slice, so peak host memory stays near one shard of one
tensor, not the whole model (bench/load_memory.py measures it). Never pickle: safetensors only.
The format (8-byte header length, JSON header, raw little-endian tensors) is read directly with
positioned reads, so no file is memory-mapped into the process and counted in its memory.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import struct
from collections.abc import Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np

from hafrm_jax.model.config import ModelConfig

log = logging.getLogger(__name__)

Path = tuple[str, ...]  # a param's path in the pytree, e.g. ("backbone", "norm", "scale")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved


@dataclasses.dataclass(frozen=True)
class TensorMap:
    path: Path
    hf_name: str  # "{i}" is the layer index for stacked params
    transpose: bool

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf_name


def _hf_name(path: Path, cfg: ModelConfig) -> TensorMap:
    """Our param path -> the Hugging Face tensor that holds it."""
    *modules, leaf = path
    suffix = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[leaf]
    if modules[0] == "reward_head":
        return TensorMap(path, "score.weight", True)
    if modules[0] == "lm_head":
        return TensorMap(path, f"lm_head.{suffix}", leaf == "kernel")
    inner = modules[1:]  # below "backbone"
    if cfg.family == "phi":
        inner = [{"o_proj": "dense", "norm": "final_layernorm"}.get(m, m) for m in inner]
    if inner[0] == "layers":
        name = "model.layers.{i}." + ".".join(inner[1:])
    else:
        name = "model." + ".".join(inner)
    return TensorMap(path, f"{name}.{suffix}", leaf == "kernel")


def tensor_maps(params_shapes: Any, cfg: ModelConfig) -> list[TensorMap]:
    """One TensorMap per leaf of a params pytree (of arrays or shape structs)."""
    flat = jax.tree_util.tree_flatten_with_path(params_shapes)[0]
    return [_hf_name(tuple(k.key for k in keys), cfg) for keys, _ in flat]


_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
           "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsFile:
    """One .safetensors file, read with positioned reads: only the rows a slice needs are
    read, and nothing is memory-mapped, so resident memory holds just what the caller keeps."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        self._data_start = 8 + header_len
        self.entries = header
        self._fd = os.open(path, os.O_RDONLY)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def read(self, name: str, slices: tuple[slice, ...] | None = None) -> np.ndarray:
        entry = self.entries[name]
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {entry['dtype']}")
        dtype = np.dtype(_DTYPES[entry["dtype"]])
        shape = tuple(entry["shape"])
        begin = self._data_start + entry["data_offsets"][0]
        rows = slice(0, shape[0] if shape else 1)
        if slices:  # read only the leading-axis rows the slice needs
            rows = slice(*slices[0].indices(shape[0])[:2])
        row_bytes = dtype.itemsize * math.prod(shape[1:])
        count = (rows.stop - rows.start) * row_bytes
        buffer = os.pread(self._fd, count, begin + rows.start * row_bytes)
        if len(buffer) != count:
            raise ValueError(f"{self.path}: tensor {name} is truncated")
        array = np.frombuffer(buffer, dtype).reshape((rows.stop - rows.start,) + shape[1:]
                                                     if shape else ())
        if slices and len(slices) > 1:
            array = array[(slice(None),) + tuple(slices[1:])]
        return array

    def close(self) -> None:
        os.close(self._fd)


class CheckpointFiles:
    """The safetensors files of a checkpoint directory, single or sharded with an index."""

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(os.path.basename(p)
                           for p in glob.glob(os.path.join(directory, "*.safetensors")))
            weight_map = None
        if not files:
            pickled = glob.glob(os.path.join(directory, "*.bin")) + glob.glob(
                os.path.join(directory, "*.pt"))
            hint = (" It has PyTorch pickle files, which are never loaded here (unpickling can "
                    "run code); convert them to safetensors first.") if pickled else ""
            raise FileNotFoundError(f"no *.safetensors weights in {directory}.{hint}")
        self._files = [SafetensorsFile(os.path.join(directory, name)) for name in files]
        self._where = {key: f for f in self._files for key in f.entries}
        if weight_map:
            missing = set(weight_map) - set(self._where)
            if missing:
                raise ValueError(f"{index} lists tensors found in no file: {sorted(missing)[:5]}")
        # Base-model checkpoints (AutoModel) store names without the "model." prefix.
        self._prefix = "" if any(k.startswith("model.") for k in self._where) else "model."

    def _key(self, name: str) -> str:
        return name[len(self._prefix):] if self._prefix and name.startswith(self._prefix) else name

    def __contains__(self, name: str) -> bool:
        return self._key(name) in self._where

    def names(self) -> set[str]:
        return {self._prefix + k if not k.startswith(("lm_head", "score")) else k
                for k in self._where}

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[self._key(name)].shape(self._key(name))

    def path_of(self, name: str) -> str:
        """The file that holds tensor `name`, for error messages."""
        return self._where[self._key(name)].path

    def read(self, name: str, slices: tuple[slice, ...] | None = None) -> np.ndarray:
        return self._where[self._key(name)].read(self._key(name), slices)

    def close(self) -> None:
        for f in self._files:
            f.close()


def _dim_groups(source: tuple[int, ...], target: tuple[int, ...]) -> list[list[int]]:
    """Which target dims each source dim splits into, e.g. [D, H*hd] -> [D, H, hd]: [[0], [1, 2]]."""
    groups, j = [], 0
    for size in source:
        group, product = [j], target[j]
        j += 1
        while product < size:
            group.append(j)
            product *= target[j]
            j += 1
        if product != size:
            raise ValueError(f"cannot reshape {source} into {target}")
        groups.append(group)
    if j != len(target):
        raise ValueError(f"cannot reshape {source} into {target}")
    return groups


def _source_slices(index: tuple[slice, ...], target: tuple[int, ...],
                   groups: list[list[int]]) -> tuple[slice, ...] | None:
    """The source-layout slices holding `index` of the target, or None if not contiguous."""
    out = []
    for group in groups:
        first = index[group[0]].indices(target[group[0]])
        inner = math.prod(target[d] for d in group[1:])
        if any(index[d].indices(target[d])[:2] != (0, target[d]) for d in group[1:]):
            return None
        out.append(slice(first[0] * inner, first[1] * inner))
    return tuple(out)


def _read_param_slice(files: CheckpointFiles, name: str, transpose: bool,
                      target: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
    """The part `index` of one (per-layer) param of shape `target`, read from tensor `name`."""
    hf_shape = files.shape(name)
    if transpose and len(hf_shape) != 2:
        raise ValueError(f"{files.path_of(name)}: tensor {name}: expected a 2-D weight, "
                         f"found shape {hf_shape}")
    ours_source = hf_shape[::-1] if transpose else hf_shape  # HF layout, transposed to ours
    try:
        groups = _dim_groups(ours_source, target)
    except ValueError as e:
        raise ValueError(f"{files.path_of(name)}: tensor {name} has shape {hf_shape}, which "
                         f"does not fit the model's {target} (config.json and weights "
                         "disagree?)") from e
    sizes = tuple(len(range(*s.indices(n))) for s, n in zip(index, target))
    slices = _source_slices(index, target, groups)
    if slices is None:  # a sharded inner dim: read the whole tensor, then cut
        full = files.read(name)
        full = (full.T if transpose else full).reshape(target)
        return full[index]
    part = files.read(name, slices[::-1] if transpose else slices)
    return (part.T if transpose else part).reshape(sizes)


def load_params(directory: str, cfg: ModelConfig, shardings: Any, abstract: Any) -> Any:
    """Params for `cfg` from the safetensors in `directory`, each shard placed on its device.

    `abstract` gives every leaf's shape and dtype, `shardings` its NamedSharding. A missing
    reward head (a causal-LM checkpoint) starts at zero; a missing untied LM head (a
    sequence-classification checkpoint) starts as the transposed input embedding.
    """
    files = CheckpointFiles(directory)
    maps = tensor_maps(abstract, cfg)
    flat_abstract, treedef = jax.tree_util.tree_flatten(abstract)
    flat_shardings = jax.tree_util.tree_leaves(shardings)
    used: set[str] = set()
    leaves = []
    for tmap, shape, sharding in zip(maps, flat_abstract, flat_shardings):
        names = ([tmap.hf_name.format(i=i) for i in range(cfg.num_layers)] if tmap.stacked
                 else [tmap.hf_name])
        present = [n for n in names if n in files]
        if len(present) == len(names):
            used.update(names)
            leaves.append(_load_leaf(files, tmap, shape, sharding))
            continue
        if present:
            raise ValueError(f"{directory}: {len(names) - len(present)} of {len(names)} "
                             f"tensors {tmap.hf_name!r} are missing")
        leaves.append(_fill_missing(files, tmap, shape, sharding, used))
    files.close()
    unused = sorted(n for n in files.names() - used if not n.endswith(_IGNORED_SUFFIXES))
    if cfg.tie_embeddings:
        unused = [n for n in unused if n != "lm_head.weight"]  # tied copy: same as embedding
    if unused:
        log.warning("%d tensors of %s are not used by the model: %s", len(unused), directory,
                    unused[:8])
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _load_leaf(files: CheckpointFiles, tmap: TensorMap, shape, sharding) -> jax.Array:
    dtype = shape.dtype
    cache: dict[tuple, np.ndarray] = {}  # replicated shards ask for the same slice

    def read(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple((s.start, s.stop) for s in index)
        if key not in cache:
            if tmap.stacked:  # fill the shard layer by layer: one layer's slice in flight
                layers = range(*index[0].indices(shape.shape[0]))
                part = None
                for k, i in enumerate(layers):
                    layer = _read_param_slice(files, tmap.hf_name.format(i=i), tmap.transpose,
                                              shape.shape[1:], index[1:])
                    if part is None:
                        part = np.empty((len(layers),) + layer.shape, dtype)
                    part[k] = layer
            else:
                part = _read_param_slice(files, tmap.hf_name, tmap.transpose, shape.shape,
                                         index).astype(dtype)
            cache[key] = part
        return cache[key]

    return jax.make_array_from_callback(shape.shape, sharding, read)


def _fill_missing(files: CheckpointFiles, tmap: TensorMap, shape, sharding,
                  used: set[str]) -> jax.Array:
    if tmap.path[0] == "reward_head":
        log.info("no `score` tensor: the reward head starts at zero")
        return jax.device_put(np.zeros(shape.shape, shape.dtype), sharding)
    if tmap.path == ("lm_head", "kernel"):
        log.warning("no `lm_head.weight` (a sequence-classification checkpoint?): the policy "
                    "head starts as the transposed input embedding")
        embedding = TensorMap(("backbone", "embed_tokens", "embedding"),
                              "model.embed_tokens.weight", True)
        used.add(embedding.hf_name)
        return _load_leaf(files, embedding, shape, sharding)
    if tmap.path == ("lm_head", "bias"):
        return jax.device_put(np.zeros(shape.shape, shape.dtype), sharding)
    raise ValueError(f"{files.directory}: the checkpoint has no tensor {tmap.hf_name!r} (for "
                     f"param {'/'.join(tmap.path)})")


def to_hf_layout(value: np.ndarray, tmap: TensorMap) -> np.ndarray:
    """One (per-layer) param in Hugging Face layout: kernels as [out, in], the rest flat."""
    if tmap.path[-1] == "embedding":
        return value
    if not tmap.transpose:
        return value.reshape(-1)
    in_dims = 2 if tmap.path[-2] == "o_proj" else 1  # o_proj contracts (heads, head_dim)
    rows = math.prod(value.shape[:in_dims])
    return value.reshape(rows, -1).T


def iter_hf_tensors(params: Any, cfg: ModelConfig, dtype: np.dtype, *, with_reward_head: bool,
                    with_lm_head: bool) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) in Hugging Face layout for export, one param at a time on the host."""
    for keys, value in jax.tree_util.tree_flatten_with_path(params)[0]:
        tmap = _hf_name(tuple(k.key for k in keys), cfg)
        if (tmap.path[0] == "reward_head" and not with_reward_head) or (
                tmap.path[0] == "lm_head" and not with_lm_head):
            continue
        array = np.asarray(jax.device_get(value))
        if tmap.stacked:
            for i in range(array.shape[0]):
                yield tmap.hf_name.format(i=i), np.ascontiguousarray(
                    to_hf_layout(array[i], tmap).astype(dtype))
        else:
            yield tmap.hf_name, np.ascontiguousarray(to_hf_layout(array, tmap).astype(dtype))
