"""Will the training step fit in device memory? Asked of the compiler before training starts.

XLA's buffer assignment knows, before anything runs, how many bytes the compiled step will
allocate on each device (the peaks it predicted for an H100 matched the measured ones to
0.4 GiB, bench/RESULTS.md). Checking it up front turns an out-of-memory failure minutes into
a run (after the data and the reference log-probs) into an error before them, naming the
settings that would make the step fit.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
from jax.sharding import Mesh

from hafrm_jax.configuration import ConfigError
from hafrm_jax.distributed import MEMORY_FRACTION_VARS

log = logging.getLogger(__name__)

GiB = 2**30


class StepDoesNotFitError(ConfigError):
    """The training step needs more memory per device than a device has."""


def device_memory_limit(mesh: Mesh) -> int | None:
    """Bytes one device of `mesh` can allocate (the least over this process's devices), or
    None where the backend does not say (the CPU)."""
    limits = []
    for device in mesh.devices.flat:
        if device.process_index != jax.process_index():
            continue
        stats = device.memory_stats()
        if not stats or "bytes_limit" not in stats:
            return None
        limits.append(int(stats["bytes_limit"]))
    return min(limits) if limits else None


def fit_advice(config: ml_collections.ConfigDict, num_devices: int,
               platform: str | None = None) -> list[str]:
    """The settings that lower the step's memory, those that apply to `config`, most
    effective first (`platform`: the devices', by default the running backend's)."""
    m, t, mesh = config.model, config.train, config.mesh
    advice = []
    if (platform or jax.devices()[0].platform) == "gpu" and \
            not any(name in os.environ for name in MEMORY_FRACTION_VARS):
        advice.append("(environment) XLA_CLIENT_MEM_FRACTION=0.95 before JAX starts: JAX "
                      "takes 75% of a GPU's memory by default (train.py asks for 95%)")
    if m.lora.rank == 0:
        advice.append("model.lora.rank=16 (or 64): LoRA freezes the backbone, so it needs no "
                      "gradient or optimizer state (configs/hh_mistral_lora.py)")
    if num_devices > 1 and mesh.fsdp != -1 and mesh.fsdp * max(mesh.tensor, 1) < num_devices:
        advice.append(f"mesh.fsdp=-1: shard params and optimizer state over all {num_devices} "
                      "devices")
    if m.remat in ("none", "dots", "dots_attention"):
        better = "dots" if m.remat == "none" else "full"
        advice.append(f"model.remat={better}: recompute more activations in the backward pass")
    if t.batch_size % (2 * t.grad_accum_steps) == 0:
        advice.append(f"train.grad_accum_steps={2 * t.grad_accum_steps}: the same batch in "
                      "microbatches half the size (activations scale with them)")
    if m.dtype == "float32":
        advice.append("model.dtype=bfloat16: half the activation memory")
    advice.append(f"data.max_length={max(config.data.max_length // 2, 1)}: shorter sequences "
                  f"(now {config.data.max_length})")
    return advice


def bytes_needed(stats) -> int:
    """Bytes per device a compiled program needs, from its `memory_analysis()`: the compiler's
    simulated peak on GPU and TPU (it matched measured H100 peaks); on the CPU, whose peak
    counts the arguments only, arguments + outputs - donated + temporaries (the GPU's peak
    equals that sum, to 0.01%)."""
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
             - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
    peak = getattr(stats, "peak_memory_in_bytes", 0)
    return peak if peak and jax.devices()[0].platform != "cpu" else total


def compiler_refusal(error: Exception) -> str | None:
    """The compiler's reason, in one line, when it refused a program too large for the device
    (libtpu: "Ran out of memory on HBM, ... (18.49G) exceeds available HBM (15.75G)."), else
    None."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    return text.split("\n")[0].split(": ", 1)[-1]


def check_step_fits(lowered: jax.stages.Lowered, limit: int | None,
                    config: ml_collections.ConfigDict, num_devices: int,
                    batch_shape: tuple[int, ...]) -> jax.stages.Compiled:
    """Compile `lowered` (the train step for the longest batch) and raise StepDoesNotFitError,
    with advice, when the compiler's peak per device exceeds `limit` bytes or the compiler
    itself finds the device too small (TPU). Returns the executable, for the loop to reuse."""
    pairs, _, seq = batch_shape
    shape = f"batches of {pairs} pairs x 2 x {seq} tokens"
    device = jax.devices()[0].device_kind

    def fail(need: str) -> StepDoesNotFitError:
        levers = "\n".join(f"  {a}" if a.startswith("(") else f"  --config.{a}"
                           for a in fit_advice(config, num_devices))
        return StepDoesNotFitError(
            f"the training step does not fit on a {device}: {need} ({shape}, the compiler's "
            f"estimate). Settings that lower it:\n{levers}\n"
            "(--config.train.check_memory=False skips this check.)")

    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        refusal = compiler_refusal(e)  # the TPU compiler refuses a program over HBM
        if refusal is None:
            raise
        raise fail(refusal) from e
    stats = compiled.memory_analysis()
    if limit is None or stats is None:
        return compiled
    peak = bytes_needed(stats)
    if peak > limit:
        raise fail(f"{peak / GiB:.2f} GiB per device, of which "
                   f"{stats.argument_size_in_bytes / GiB:.2f} GiB params, optimizer state "
                   f"and batch, where a device has {limit / GiB:.2f} GiB")
    log.info("the training step needs %.2f GiB of the %.2f GiB a device has (%s, the "
             "compiler's estimate)", peak / GiB, limit / GiB, shape)
    return compiled
