"""Process start-up: `jax.distributed.initialize()` when the job spans several processes, the
share of GPU memory JAX may take, and on CPU how the host allocator keeps XLA's buffers.

TPU VM pod slices and SLURM / Open MPI GPU jobs describe themselves in the environment, and
`jax.distributed.initialize()` reads them; elsewhere the coordinator address, the process count
and this process's id are given explicitly (train.py's --coordinator_address, --num_processes,
--process_id). Call this before anything touches a device.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
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


# glibc's mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# keep_cpu_buffers' settings: blocks up to 512 MiB from the heap, not from a mapping of their own;
# 1 GiB of freed heap top kept mapped; 64 MiB of padding (a thread arena's whole heap), which
# keeps an emptied thread heap from being unmapped
_CPU_ALLOCATOR = ((_M_MMAP_THRESHOLD, 512 << 20), (_M_TRIM_THRESHOLD, 1 << 30),
                  (_M_TOP_PAD, 64 << 20))


def keep_cpu_buffers() -> bool:
    """On JAX's CPU backend, have glibc's malloc reuse the memory of XLA's buffers from one call
    to the next instead of taking it from the kernel afresh every call.

    XLA:CPU mallocs each call's temporaries. By default glibc serves a block over 32 MiB with a
    mapping of its own and unmaps it when freed, unmaps a thread arena's heap once it is empty,
    and gives a freed heap top back: so every training step page-faulted its working set in
    again, and the default job spent 41 of its 116 CPU-seconds in the kernel (23.5M page faults).
    With this call: 0.35M faults, 2.6 s in the kernel, 46 s instead of 68 s on 2 cores, peak
    resident memory 0.99 -> 1.23 GB (`bench/cpu_allocator.py`, medians of 3). A worker thread's
    block over 64 MiB (its heap's limit) still gets a mapping of its own: larger models gain
    less. Call after `initialize`, since this starts the backend. A no-op, returning False, on
    GPU and TPU (XLA's own allocator owns device memory) and without glibc.
    """
    if jax.default_backend() != "cpu" or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their own allocators
        return False
    applied = all(libc.mallopt(param, ctypes.c_int(value)) == 1 for param, value in _CPU_ALLOCATOR)
    log.info("host allocator for XLA:CPU's buffers%s: mallopt %s", "" if applied else " refused",
             _CPU_ALLOCATOR)
    return applied
