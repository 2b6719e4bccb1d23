"""Compile our training step for a GPU this machine does not have, and report what XLA's GPU
compiler predicts: peak device memory, and a roofline of the compiled program's kernels. With
--tpu, compile it for a TPU slice instead (libtpu's compiler; peak memory per chip only).

  pip install "jax-cuda12-plugin[with-cuda]==$(python -c 'import jax; print(jax.__version__)')"
  python bench/gpu_compile.py --cases=qwen2.5-0.5b:haf:1024,qwen2.5-1.5b:haf:1024+remat=dots
  python bench/gpu_compile.py --cases=qwen2.5-0.5b:haf:1024 --top=20 --hlo-dir=/tmp/hlo
  pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')"   # libtpu, no TPU
  python bench/gpu_compile.py --tpu=v5e:2x2 --pairs=16 --cases=qwen2.5-0.5b:haf:512+remat=dots+unroll=1

No GPU and no CUDA driver is needed: the CUDA plugin compiles for a described device (an
H100 80GB by default, `--target-config` for another) without running anything, so a change
to the step can be checked on a laptop before a GPU session is spent on it. Cases are written
as in bench/train_step.py (our step only) and built the same way (same model config, batch,
optimizer and jitted step); the bench's defaults apply (--remat=none --unroll=0 --chunk=128,
cuDNN attention).

What to trust: the peak is the compiler's own buffer assignment, which is what the device
allocates for the program; it matched every H100 peak measured in bench/RESULTS.md to 0.4 GiB.
On a TPU slice the params, optimizer state and batch are sharded over every chip (mesh.fsdp=-1,
what the recipes do on a slice), the peak is per chip, and libtpu's compiler refuses a program
larger than a chip's memory: that case is reported as not fitting, with the compiler's figures.
A topology of several hosts (v5e:4x4) compiles the whole job's program from this one process.
The roofline (bench/hlo_roofline.py) is a lower bound from bytes and FLOPs, not a timing:
kernels that run far from it show up by comparing with a profile. Autotuning is off without
a device, so GEMM kernel choices can differ from a real compile; fusion decisions do not
depend on it.
"""

from __future__ import annotations

import os

# Compile for the GPU, never run on it: the CUDA plugin's checks and backend stay off.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from bench.hlo_roofline import (add_roofline_options, bound_seconds,  # noqa: E402
                                format_roofline, program_kernels)
from bench.train_step import (Case, add_step_options, bench_batch, bench_optimizer,  # noqa: E402
                              case_model_config, logprob_loop_trips, step_function)
from hafrm_jax.sharding import DEFAULT_RULES, MESH_AXES, batch_sharding  # noqa: E402
from hafrm_jax.train.memory import compiler_refusal  # noqa: E402
from hafrm_jax.train.state import (abstract_params, abstract_train_state,  # noqa: E402
                                   param_shardings, state_shardings)

# An H100 SXM 80GB as the CUDA plugin describes it (the device tool's machines).
H100_TARGET = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 7 }
runtime_version { major: 12 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


def gpu_mesh(target_config: str) -> jax.sharding.Mesh:
    """A one-device mesh of the described GPU, for compiling only."""
    try:
        topology = topologies.get_topology_desc(platform="cuda", target_config=target_config,
                                                topology="1x1x1")
    except Exception as e:  # noqa: BLE001  the plugin missing is the usual cause
        raise SystemExit(
            f"cannot describe a CUDA device ({type(e).__name__}: {e}); install the plugin "
            "matching jax: pip install \"jax-cuda12-plugin[with-cuda]==" + jax.__version__
            + '"') from e
    return topologies.make_mesh(topology, (1, 1, 1), MESH_AXES)


def tpu_mesh(topology_name: str) -> jax.sharding.Mesh:
    """Every chip of the named TPU slice (libtpu's names: v5e:2x2, v6e:1x1, v5p:2x2x1, ...)
    on the fsdp axis, for compiling only."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # no TPU VM metadata to ask
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling only: no chip to lock
    one_chip = {"chips_per_host_bounds": (1, 1, 1)} if topology_name.endswith(":1x1") else {}
    try:
        topology = topologies.get_topology_desc(platform="tpu", topology_name=topology_name,
                                                **one_chip)
    except Exception as e:  # noqa: BLE001  libtpu missing, or a name it does not know
        raise SystemExit(
            f"cannot describe the TPU slice {topology_name!r} ({type(e).__name__}: {e}); "
            "libtpu comes with: pip install \"jax[tpu]==" + jax.__version__ + '"') from e
    return topologies.make_mesh(topology, (1, len(topology.devices), 1), MESH_AXES)


def lower_case(case: Case, args, mesh: jax.sharding.Mesh):
    """(model config, lowered step) of one of our cases, from shapes alone."""
    cfg = case_model_config(case, args)
    optimizer, schedule = bench_optimizer(args.steps)
    params = abstract_params(cfg)
    shardings = state_shardings(optimizer, param_shardings(cfg, mesh, DEFAULT_RULES), params,
                                mesh)
    state = jax.tree_util.tree_map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        abstract_train_state(optimizer, params), shardings)
    on_data = batch_sharding(mesh, DEFAULT_RULES)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=on_data)
             for k, v in bench_batch(cfg, args.pairs, case.seq).items()}
    with jax.set_mesh(mesh):
        return cfg, step_function(cfg, case.method, optimizer, schedule).lower(state, batch)


def compile_case(case: Case, args, mesh: jax.sharding.Mesh):
    """(model config, compiled step) of one of our cases, from shapes alone."""
    cfg, lowered = lower_case(case, args, mesh)
    return cfg, lowered.compile()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", required=True, help="bench/train_step.py's, ours only")
    add_step_options(parser)
    parser.add_argument("--target-config", default=None,
                        help="file with a GpuTargetConfig in text form (default: an H100)")
    parser.add_argument("--tpu", default=None, metavar="TOPOLOGY",
                        help="compile for this TPU slice instead, e.g. v5e:2x2 (needs libtpu)")
    add_roofline_options(parser)
    parser.add_argument("--top", type=int, default=10, help="kernels listed per case")
    parser.add_argument("--hlo-dir", default=None, help="write each compiled program here")
    args = parser.parse_args()
    args.attention = args.attention or ("xla" if args.tpu else "cudnn")  # cuDNN: NVIDIA only

    if args.tpu:
        mesh = tpu_mesh(args.tpu)
    else:
        target = H100_TARGET
        if args.target_config:
            with open(args.target_config) as f:
                target = f.read()
        mesh = gpu_mesh(target)
    device = mesh.devices.flat[0].device_kind
    cases = [Case.parse(c) for c in args.cases.split(",")]
    if any(c.stack != "hafrm-jax" for c in cases):
        raise SystemExit("gpu_compile.py compiles our step only; PyTorch cases run on a GPU")
    if args.pairs % mesh.size:
        raise SystemExit(f"--pairs={args.pairs} must be divisible by the {mesh.size} devices")
    rows = []
    for case in cases:
        start = time.perf_counter()
        try:
            cfg, compiled = compile_case(case, args, mesh)
        except jax.errors.JaxRuntimeError as e:
            refusal = compiler_refusal(e) if args.tpu else None
            if refusal is None:
                raise
            rows.append((case, None, refusal, time.perf_counter() - start))
            print(f"# {case.spec()} on {mesh.size} x {device}: does not fit: {refusal}\n",
                  flush=True)
            continue
        seconds = time.perf_counter() - start
        memory = compiled.memory_analysis()
        text = compiled.as_text()
        if args.hlo_dir:
            os.makedirs(args.hlo_dir, exist_ok=True)
            name = "".join(c if c.isalnum() or c in ".-" else "_" for c in case.spec())
            with open(os.path.join(args.hlo_dir, name + ".hlo"), "w") as f:
                f.write(text)
        peak_gib = memory.peak_memory_in_bytes / 2**30
        if args.tpu:  # the roofline reads GPU kernels; a TPU program has other fusions
            rows.append((case, peak_gib, None, seconds))
            print(f"# {case.spec()} on {mesh.size} x {device}: predicted peak {peak_gib:.2f} "
                  f"GiB per chip, compiled in {seconds:.1f} s\n", flush=True)
            continue
        kernels = program_kernels(text, unknown_trips=logprob_loop_trips(cfg, case.seq))
        bandwidth, peak = args.bandwidth_tb_s * 1e12, args.peak_tflops * 1e12
        bound = bound_seconds(kernels, bandwidth, peak)
        rows.append((case, peak_gib, bound, seconds))
        print(f"# {case.spec()} on {device}: predicted peak {peak_gib:.2f} GiB, "
              f"compiled in {seconds:.1f} s\n"
              + format_roofline(kernels, bandwidth, peak, args.top) + "\n", flush=True)
    if args.tpu:
        print(f"# {args.tpu}: {mesh.size} x {device} (compiled here, not run), "
              f"{args.pairs} pairs/step, {args.dtype}, params sharded over every chip")
        print("| case | predicted peak GiB per chip | compile s |")
        print("|---|---|---|")
        for case, peak_gib, refusal, seconds in rows:
            fit = f"{peak_gib:.2f}" if refusal is None else f"does not fit: {refusal}"
            print(f"| {case.spec()} | {fit} | {seconds:.1f} |")
        return
    print(f"# {device} (compiled here, not run), {args.pairs} pairs/step, {args.dtype}")
    print("| case | predicted peak GiB | roofline bound ms | compile s |")
    print("|---|---|---|---|")
    for case, peak_gib, bound, seconds in rows:
        print(f"| {case.spec()} | {peak_gib:.2f} | {bound * 1e3:.1f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
