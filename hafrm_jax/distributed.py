"""Multi-host start-up: `jax.distributed.initialize()` when the job spans several processes.

TPU VM pod slices and SLURM / Open MPI GPU jobs describe themselves in the environment, and
`jax.distributed.initialize()` reads them; elsewhere the coordinator address, the process count
and this process's id are given explicitly (train.py's --coordinator_address, --num_processes,
--process_id). Call this before anything touches a device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

import jax

log = logging.getLogger(__name__)

# JAX's GPU allocator takes this share of each GPU's memory (75% where neither is set); the
# second name is deprecated, and giving both is an error.
MEMORY_FRACTION_VARS = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")


def claim_gpu_memory(fraction: float = 0.95, env: MutableMapping[str, str] = os.environ) -> None:
    """Let JAX's allocator take `fraction` of each GPU's memory instead of its default 75%: a
    training process owns its GPUs (Phi-2 at the paper's batch needs 62.6 GiB of an 80 GB H100
    with remat dots). Unless `env` already sets it; call before JAX starts its backend. No
    effect on TPU or CPU."""
    if not any(name in env for name in MEMORY_FRACTION_VARS):
        env["XLA_CLIENT_MEM_FRACTION"] = str(fraction)


def _cluster_in_environment() -> str | None:
    """The kind of multi-process launch the environment describes, if any."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h]) > 1:
        return "TPU pod slice"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "Open MPI"
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, cpu_collectives: str | None = None) -> bool:
    """Join a multi-process job if one is described (explicitly or by the environment).

    Returns whether `jax.distributed.initialize` ran. cpu_collectives ("gloo") lets several
    CPU processes run one computation: the multi-host tests use it on one machine.
    """
    explicit = coordinator_address is not None
    cluster = _cluster_in_environment()
    if not explicit and cluster is None:
        if num_processes is not None or process_id is not None:
            # each process would train on its own, all writing the same workdir
            raise ValueError("--num_processes / --process_id need --coordinator_address (or a "
                             "cluster environment: TPU VM, SLURM, Open MPI, "
                             "JAX_COORDINATOR_ADDRESS)")
        return False
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    # what the flags give, the environment fills in (auto-detection)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    log.info("process %d of %d (%s), %d local of %d devices", jax.process_index(),
             jax.process_count(), cluster or "explicit coordinator", jax.local_device_count(),
             jax.device_count())
    return True
