"""Benchmark hafrm-jax's training step: tokens/s, model TFLOP/s, MFU, peak memory, compile time.

  python bench/train_step.py --smoke                          # tiny, any machine (CI runs this)
  python bench/train_step.py --shape=qwen2.5-0.5b --methods=haf,baseline --seqs=1024
  python bench/train_step.py --shape=qwen2.5-0.5b --seqs=512,1024,2048,4096 --compare-torch
  python bench/train_step.py --cases=qwen2.5-0.5b:haf:1024,qwen2.5-0.5b:haf:1024:eager,\
qwen2.5-1.5b:baseline:1024 --budget-s=300 --json=out.jsonl     # cases run in the order given
  python bench/train_step.py --cases=qwen2.5-0.5b:haf:1024,qwen2.5-0.5b:haf:1024+chunk=512+unroll=1
  python bench/train_step.py --cases=qwen2.5-0.5b:baseline:1024+unroll=1+xla=cublas  # scan, cuBLAS
  python bench/train_step.py --cases=qwen2.5-0.5b:haf:1024+head=pallas+tile=64x128x64  # LM-head
      # kernels (hafrm_jax/model/head_kernel.py) with a tile of 64 rows x 128 vocab x 64 depth
  python bench/train_step.py --cases=qwen2.5-0.5b:haf:1024+mlp=pallas  # the MLP's backward
      # kernel (hafrm_jax/model/mlp_kernel.py)
  python bench/train_step.py --cases=qwen2.5-0.5b:haf:1024 --profile=/tmp/prof   # + busiest ops,
      # and the kernels furthest from their roofline bound (bench/hlo_roofline.py)

Each case runs in a fresh subprocess, so peak device memory is the case's own and the JAX and
PyTorch allocators never share a GPU; a case that fails (out of memory, say) is reported as an
error row and the rest go on. --budget-s stops starting new cases once that many seconds have
passed (a time-boxed GPU lease), and says which were skipped.

The step is the library's own (`hafrm_jax.train.step.train_step`: one forward over chosen and
rejected, chunked LM-head log-probs, AdamW with float32 master weights), on random weights of a
real shape, with precomputed reference log-probs, as in the issue's PyTorch anchor.

FLOPs per step (the anchor's formula, forward x 3 for forward + backward):
  3 * tokens * (L * (2 * (d*d + 2*d*kv + d*d) + 2*m*d*ff + 2*T*d) + [2*d*V with the LM head])
where kv = num_kv_heads * head_dim, m = 3 for a gated MLP (gate, up, down) and 2 for a plain
one (Phi-2), T the sequence length (causal attention: half of 4*T*d), and the LM-head term
only for methods that use it (haf, dpo). "TFLOP/s" and "MFU" (over the bf16 matmul peak
measured at start-up on the same device) use this count for every stack, so they compare
across stacks. It charges the LM head at every position, as the anchor runs it (trl's way:
logits of the whole sequence, then masked); our step runs it on the chunks holding response
tokens only (half of each sequence here), so "MFU own" also prints our MFU counting the LM-head
positions we run (for PyTorch rows it is the same as MFU).

The PyTorch anchor (bench/torch_reference.py, the issue's ../shared/bench/torch_anchor.py
step) is kept as the issue measured it: AdamW with torch's default weight decay 0.01 and no
gradient clipping. Our step clips at global norm 1.0 (our default; one more pass over the
gradients) with weight decay 0. For PyTorch rows "compile s" is the first 3 steps' time (the
warm-up; with torch.compile most of it is compiling). "setup s" is our case's process start
to its step's compile: imports, the device's start, random params, optimizer state and batch
(the JSON row's `phases_s` splits it, and the run after the compile).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time

_PROCESS_START = time.perf_counter()  # before jax, the library and CUDA's libraries load
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from bench.hlo_roofline import (H100_BANDWIDTH_TB_S, device_bandwidth_tb_s,  # noqa: E402
                                format_against_profile, match_profile, program_kernels)
from bench.trace_summary import (find_trace, format_summary, load_events, summarize,  # noqa: E402
                                 timeline_op_ms)
from hafrm_jax.distributed import claim_gpu_memory  # noqa: E402
from hafrm_jax.model.config import (ATTENTION_IMPLS, LM_HEAD_KERNELS, MLP_KERNELS,  # noqa: E402
                                    PRESETS, REMAT_POLICIES, ModelConfig)
from hafrm_jax.model.head_kernel import HeadBlocks  # noqa: E402
from hafrm_jax.model.mlp_kernel import MlpBlocks  # noqa: E402
from hafrm_jax.objective import LossConfig, ObjectiveConfig  # noqa: E402
from hafrm_jax.sharding import (DEFAULT_RULES, batch_sharding, make_mesh,  # noqa: E402
                                traced_under_rules)
from hafrm_jax.train.optimizer import make_optimizer  # noqa: E402
from hafrm_jax.train.state import create_train_state, init_params  # noqa: E402
from hafrm_jax.train.step import train_step  # noqa: E402


def step_flops(cfg: ModelConfig, pairs: int, seq: int, with_lm_head: bool,
               lm_head_positions: int | None = None) -> float:
    """Model FLOPs of one step (the module docstring's formula); the LM head at
    `lm_head_positions` positions of each sequence (default: all `seq`, the anchor's count)."""
    d, ff, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
    kv = cfg.num_kv_heads * cfg.dim_per_head
    mlp_matmuls = 3 if cfg.mlp == "gated" else 2
    per_layer = 2 * (d * d + 2 * d * kv + d * d) + 2 * mlp_matmuls * d * ff
    attention = 2 * 2 * seq * d / 2
    sequences = 2 * pairs
    backbone = layers * (per_layer + attention) * sequences * seq
    head_positions = seq if lm_head_positions is None else lm_head_positions
    head = 2 * d * vocab * sequences * head_positions if with_lm_head else 0
    return 3 * (backbone + head)


def median_seconds(run, samples: int, calls: int = 1) -> float:
    """Median over `samples` of the wall time per call of `run()` (device work, asynchronous):
    each sample launches `calls` of them back to back and synchronises once, at the end (one
    device queue: the last call ends after the rest)."""
    def sample() -> float:
        start = time.perf_counter()
        for _ in range(calls - 1):
            run()
        jax.block_until_ready(run())
        return (time.perf_counter() - start) / calls

    return float(np.median([sample() for _ in range(samples)]))


PEAK_SAMPLES, PEAK_CALLS = 10, 10  # matmul_peak_tflops' samples, and products in each


def matmul_peak_tflops(size: int, dtype=jnp.bfloat16, samples: int = PEAK_SAMPLES,
                       calls: int = PEAK_CALLS) -> dict[str, float]:
    """Measured dense matmul throughput of the first device in TFLOP/s, on random data (zeros
    and ones run faster than real operands on some GPUs), the median of `samples`:

    - "peak_tflops": each sample times `calls` products launched back to back with one
      synchronisation at the end, as the step is timed; the MFU denominator;
    - "peak_tflops_per_call": each sample one product, synchronised: what rounds 1-12 of
      bench/RESULTS.md used. The host's launch and synchronisation add to each such sample
      (their share is a measurement of the device machine, not a constant).
    """
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (size, size), dtype)
    b = jax.random.normal(kb, (size, size), dtype)
    f = jax.jit(lambda x, y: x @ y)
    for _ in range(3):  # compile, then two more: clocks that idle low come up
        f(a, b).block_until_ready()
    tflop = 2 * size ** 3 / 1e12
    return {"peak_tflops": tflop / median_seconds(lambda: f(a, b), samples, calls),
            "peak_tflops_per_call": tflop / median_seconds(lambda: f(a, b), samples)}


def fused_attention_calls(hlo_text: str) -> dict[str, int]:
    """cuDNN attention kernels in a compiled program's text, forward and backward. Each compiled
    computation counts once (a scanned layer body once, not once per layer): with remat, a
    second forward call means the backward pass runs the attention forward again."""
    calls = [line for line in hlo_text.splitlines() if 'custom_call_target="__cudnn$fmha' in line]
    backward = sum("Backward" in line for line in calls)
    return {"forward": len(calls) - backward, "backward": backward}


def peak_memory_gb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def bench_optimizer(total_steps: int):
    """AdamW with global-norm clipping at a constant rate: (optimizer, schedule)."""
    optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-5, schedule="constant", warmup_steps=0, end_learning_rate_factor=1.0,
        weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0))
    return make_optimizer(optim, total_steps)


def logprob_loop_trips(cfg: ModelConfig, seq: int) -> int:
    """Iterations of the log-prob chunk loops on `bench_batch`: the chunks holding a response
    token (the loops' trip count is dynamic, so the compiled program does not say)."""
    return -(-(seq - seq // 2) // cfg.logprob_chunk)


def bench_batch(cfg: ModelConfig, pairs: int, seq: int) -> dict[str, np.ndarray]:
    """Random tokens, no padding, the second half of each sequence the response (as in the
    PyTorch anchor), and reference log-probs (precomputed in training)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, cfg.vocab_size, size=(pairs, 2, seq), dtype=np.int32)
    response = np.zeros((pairs, 2, seq), np.int32)
    response[..., seq // 2:] = 1
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "response_mask": response,
            "ref_logps": rng.normal(-seq / 2, 10, size=(pairs, 2)).astype(np.float32)}


def step_function(cfg: ModelConfig, method: str, optimizer, schedule):
    """The library's training step for `method`, jitted, the state's buffers donated."""
    loss_config = LossConfig(cfg, ObjectiveConfig(method, alpha=0.2, beta=0.1))
    step = lambda s, b: train_step(s, b, None, None, loss_config=loss_config,
                                   optimizer=optimizer, schedule=schedule, grad_accum_steps=1)
    return jax.jit(traced_under_rules(step, DEFAULT_RULES), donate_argnums=0)


def run_case(cfg: ModelConfig, method: str, pairs: int, seq: int, steps: int,
             peak_tflops: float, profile_dir: str | None = None, profile_steps: int = 3,
             bandwidth_tb_s: float = H100_BANDWIDTH_TB_S) -> dict:
    """One timed case; with profile_dir, `profile_steps` more steps run under the JAX profiler
    (after the timing, so it does not perturb it) and the row gets the trace's summary, with
    each kernel against its roofline bound at `bandwidth_tb_s` and `peak_tflops`."""
    setup_start = time.perf_counter()
    mesh = make_mesh()
    optimizer, schedule = bench_optimizer(steps + 3 + profile_steps)
    params, params_sh = init_params(cfg, 0, mesh, DEFAULT_RULES)
    state, state_sh = create_train_state(params, params_sh, optimizer, 0, mesh)
    batch = jax.device_put(bench_batch(cfg, pairs, seq), batch_sharding(mesh, DEFAULT_RULES))
    jax.block_until_ready((state, batch))
    setup_s = time.perf_counter() - setup_start
    fn = step_function(cfg, method, optimizer, schedule)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        compiled = fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        program = compiled.as_text()
        attention_calls = fused_attention_calls(program)
        run_start = time.perf_counter()
        for _ in range(2):  # warm-up
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - start) / steps
        profile = None
        if profile_dir:
            try:  # a profiler that cannot start (no CUPTI, say) must not cost the timing row
                with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
                    for _ in range(profile_steps):
                        state, metrics = compiled(state, batch)
                    jax.block_until_ready(metrics)
                events = load_events(find_trace(profile_dir))
                timelines = summarize(events, profile_steps, top=12)
                # the profiled kernels against their roofline bounds in the compiled program
                with open(os.path.join(profile_dir, "program.hlo"), "w") as f:
                    f.write(program)
                kernels = program_kernels(program, logprob_loop_trips(cfg, seq))
                against = format_against_profile(
                    kernels, match_profile(kernels, timeline_op_ms(events, profile_steps)),
                    bandwidth_tb_s * 1e12, peak_tflops * 1e12)
                profile = dict(dir=profile_dir, steps=profile_steps, timelines=timelines[:4],
                               against_bound=against, bandwidth_tb_s=bandwidth_tb_s)
            except Exception as e:  # noqa: BLE001  reported in the row, not raised
                profile = dict(dir=profile_dir, error=f"{type(e).__name__}: {e}"[:300],
                               timelines=[])
        run_s = time.perf_counter() - run_start
    tokens = 2 * pairs * seq
    uses_head = method != "baseline"
    tflops = step_flops(cfg, pairs, seq, uses_head) / step_s / 1e12
    # the positions our LM-head loops run: every chunk holding a response token
    own_positions = min(seq, logprob_loop_trips(cfg, seq) * cfg.logprob_chunk)
    own_tflops = step_flops(cfg, pairs, seq, uses_head, own_positions) / step_s / 1e12
    return dict(stack="hafrm-jax", method=method, pairs=pairs, seq=seq, step_s=round(step_s, 4),
                tokens_per_s=round(tokens / step_s), tflops=round(tflops, 2),
                mfu=round(tflops / peak_tflops, 4),
                mfu_own=round(own_tflops / peak_tflops, 4), peak_mem_gb=peak_memory_gb(),
                compile_s=round(compile_s, 1), loss=float(metrics["loss/total"]),
                # where a case's wall time goes (a lease has to plan for all of it): the
                # process's imports and device start, then random params, optimizer state and
                # batch on the device (their programs compiled), then the step's compile, then
                # warm-up, timed steps and any profile; the rest is the process's start and exit
                phases_s=dict(imports=round(setup_start - _PROCESS_START, 1),
                              setup=round(setup_s, 1), compile=round(compile_s, 1),
                              run=round(run_s, 1)),
                fused_attention_calls=attention_calls,
                device=jax.devices()[0].device_kind, **({"profile": profile} if profile else {}))


def run_torch(shape: str, method: str, pairs: int, seq: int, steps: int, compile_: bool) -> dict:
    """The PyTorch + transformers reference step of the issue."""
    from bench.torch_reference import run as torch_run

    return torch_run(shape, "rm" if method == "baseline" else "haf", pairs, seq, steps, compile_)


# Named XLA flag sets a case can run under (`+xla=name`), for trying compiler options per case.
XLA_FLAG_SETS = {
    "cublas": "--xla_gpu_enable_triton_gemm=false",  # every matmul through cuBLAS, none in Triton
    "cudnn_fusion": "--xla_gpu_cudnn_gemm_fusion_level=2",  # cuDNN takes matmul epilogues
    "no_graphs": "--xla_gpu_enable_command_buffer=",  # no CUDA graphs
    "lhs": "--xla_gpu_enable_latency_hiding_scheduler=true",
    "dsf": "--xla_gpu_enable_dynamic_slice_fusion=true",  # scan slices fed to library calls
}

# Per-case execution options of our step: `+remat=none+chunk=512` after a case overrides the
# command line's --remat / --chunk / --attention / --unroll for that case alone; `+xla=name` runs
# it under one of XLA_FLAG_SETS; `+head=pallas` uses the LM-head kernels, `+tile=64x128x64` with
# another tile (rows x vocab x depth), `+warps=4+stages=4` with other Triton launch options
# (HeadBlocks); `+mlp=pallas` runs the gated MLP's backward kernel, `+mlptile=64x128x64
# +mlpwarps=4+mlpstages=4` with another tile (rows x mlp x depth) and launch options (MlpBlocks).
# None: an integer; TILE: three integers joined by "x".
TILE = "RxVxD"
CASE_OPTIONS = {"remat": REMAT_POLICIES, "chunk": None, "attention": ATTENTION_IMPLS,
                "unroll": None, "xla": tuple(XLA_FLAG_SETS), "head": LM_HEAD_KERNELS,
                "tile": TILE, "warps": None, "stages": None, "mlp": MLP_KERNELS,
                "mlptile": TILE, "mlpwarps": None, "mlpstages": None}


def _valid_option(allowed, value: str) -> bool:
    if allowed is None:
        return value.isdigit()
    if allowed == TILE:
        parts = value.split("x")
        return len(parts) == 3 and all(p.isdigit() for p in parts)
    return value in allowed


def _describe(allowed) -> str:
    return "<int>" if allowed is None else allowed if allowed == TILE else "|".join(allowed)


@dataclasses.dataclass(frozen=True)
class Case:
    stack: str  # hafrm-jax | torch
    shape: str
    method: str  # haf | baseline
    seq: int
    compile: bool = False  # torch only: torch.compile
    options: tuple[tuple[str, str], ...] = ()  # ours only: (name, value) from CASE_OPTIONS

    @classmethod
    def parse(cls, text: str) -> "Case":
        """shape:method:seq[+option=value...] for our step; shape:method:seq:eager|compile for
        PyTorch's."""
        spec, *option_texts = text.split("+")
        fields = spec.split(":")
        if len(fields) not in (3, 4) or fields[1] not in ("haf", "baseline") \
                or (len(fields) == 4 and fields[3] not in ("eager", "compile")) \
                or (len(fields) == 4 and option_texts):
            raise SystemExit(f"bad case {text!r}: expected shape:method:seq[+option=value...] "
                             "(ours) or shape:method:seq:eager|compile (PyTorch)")
        if fields[0] not in PRESETS:
            raise SystemExit(f"bad case {text!r}: unknown shape {fields[0]!r}; shapes: "
                             + ", ".join(sorted(PRESETS)))
        if not fields[2].isdigit() or int(fields[2]) < 2:
            raise SystemExit(f"bad case {text!r}: seq {fields[2]!r} must be an integer >= 2")
        options = []
        for option in option_texts:
            name, _, value = option.partition("=")
            allowed = CASE_OPTIONS.get(name, ())
            if not value or not _valid_option(allowed, value):
                raise SystemExit(f"bad option {option!r} in case {text!r}: expected one of "
                                 + ", ".join(f"{k}={_describe(v)}"
                                             for k, v in CASE_OPTIONS.items()))
            options.append((name, value))
        stack = "torch" if len(fields) == 4 else "hafrm-jax"
        return cls(stack, fields[0], fields[1], int(fields[2]),
                   len(fields) == 4 and fields[3] == "compile", tuple(options))

    def spec(self) -> str:
        suffix = (":compile" if self.compile else ":eager") if self.stack == "torch" else ""
        return f"{self.shape}:{self.method}:{self.seq}{suffix}" + "".join(
            f"+{name}={value}" for name, value in self.options)

    def label(self) -> str:
        return self.stack + (" compile" if self.compile else " eager" if self.stack == "torch"
                             else "") + "".join(f" {n}={v}" for n, v in self.options)


def with_torch_cases(cases: list[Case]) -> list[Case]:
    """`cases`, then the PyTorch step (eager and compiled) of each (shape, method, seq) of
    ours, once each, and only where not listed already (a torch.compile case costs ~1.5 min
    of warm-up on a time-boxed GPU)."""
    out = list(cases)
    for case in cases:
        if case.stack != "hafrm-jax":
            continue
        for compile_ in (False, True):
            torch_case = Case("torch", case.shape, case.method, case.seq, compile_)
            if torch_case not in out:
                out.append(torch_case)
    return out


def case_model_config(case: Case, args) -> ModelConfig:
    """The model config of one of our cases: the shape's preset with the command line's
    execution options (--dtype, --remat, --chunk, --attention, --unroll), then the case's."""
    default = PRESETS[case.shape]
    options = {"remat": args.remat, "chunk": str(args.chunk), "attention": args.attention,
               "unroll": str(args.unroll), "head": default.lm_head_kernel,
               "mlp": default.mlp_kernel, **dict(case.options)}
    try:
        blocks = HeadBlocks(*default.lm_head_blocks)
        warps = int(options["warps"]) if "warps" in options else blocks.warps
        blocks = HeadBlocks.from_tile(options.get("tile", blocks.tile), warps=warps,
                                      stages=int(options.get("stages", blocks.stages)))
        mlp_blocks = MlpBlocks(*default.mlp_blocks)
        mlp_blocks = MlpBlocks.from_tile(
            options.get("mlptile", mlp_blocks.tile),
            warps=int(options.get("mlpwarps", mlp_blocks.warps)),
            stages=int(options.get("mlpstages", mlp_blocks.stages)))
        return dataclasses.replace(default, dtype=args.dtype, remat=options["remat"],
                                   attention_impl=options["attention"],
                                   logprob_chunk=int(options["chunk"]),
                                   scan_unroll=int(options["unroll"]),
                                   lm_head_kernel=options["head"],
                                   lm_head_blocks=dataclasses.astuple(blocks),
                                   mlp_kernel=options["mlp"],
                                   mlp_blocks=dataclasses.astuple(mlp_blocks))
    except ValueError as e:  # a tile or launch option Triton cannot take, a kernel the model's
        # MLP cannot use
        raise SystemExit(f"bad case {case.spec()!r}: {e}") from None


def _run_one(args, case: Case, peak: float) -> dict:
    """Body of a case's subprocess."""
    if case.stack == "torch":
        return run_torch(case.shape, case.method, args.pairs, case.seq, args.steps, case.compile)
    cfg = case_model_config(case, args)
    blocks, mlp_blocks = HeadBlocks(*cfg.lm_head_blocks), MlpBlocks(*cfg.mlp_blocks)
    profile_dir = None
    if args.profile:
        profile_dir = os.path.join(os.path.abspath(args.profile),
                                   "".join(c if c.isalnum() or c in ".-" else "_"
                                           for c in case.spec()))
    row = run_case(cfg, case.method, args.pairs, case.seq, args.steps, peak, profile_dir,
                   bandwidth_tb_s=profile_bandwidth_tb_s(args.bandwidth_tb_s,
                                                         jax.devices()[0].device_kind))
    row.update(attention=cfg.attention_impl, remat=cfg.remat, chunk=cfg.logprob_chunk,
               unroll=cfg.scan_unroll, head=cfg.lm_head_kernel, tile=blocks.tile,
               warps=blocks.num_warps, stages=blocks.stages, mlp=cfg.mlp_kernel,
               mlp_tile=mlp_blocks.tile, mlp_warps=mlp_blocks.warps,
               mlp_stages=mlp_blocks.stages,
               xla_flags=os.environ.get("XLA_FLAGS", ""))
    return row


def profile_bandwidth_tb_s(flag: float | None, device_kind: str) -> float:
    """The memory bandwidth a profile's kernels are held against: --bandwidth-tb-s where given,
    else the device's datasheet figure, else (a device not in the table) an H100 SXM's."""
    return flag or device_bandwidth_tb_s(device_kind) or H100_BANDWIDTH_TB_S


_RESULT = "RESULT "  # prefix of the one line a case subprocess prints for its parent


def _spawn(argv: list[str], timeout: float, xla_flags: str = "") -> tuple[dict | None, str]:
    """Run this script with argv in a subprocess, with xla_flags added to XLA_FLAGS; (its JSON
    result or None, its output tail)."""
    env = dict(os.environ)
    claim_gpu_memory(env=env)  # the case owns the device
    # whole tracebacks: with JAX's filtering on, the last line of an error is its note about
    # removed frames, not the error
    env["JAX_TRACEBACK_FILTERING"] = "off"
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    try:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], env=env,
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    for line in reversed(out.stdout.splitlines()):
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):]), ""
    return None, _error_line(out.stderr or out.stdout, out.returncode)


def _error_line(output: str, returncode: int) -> str:
    """The line of a failed case's output that names its error: the last "SomeError: ..." or
    "SomeException: ..." line, else the last line."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines
              if re.match(r"^[\w.]*(Error|Exception|Exhausted|Interrupt)\b", line)]
    if errors:
        return errors[-1][:300]
    return lines[-1][:300] if lines else f"exit status {returncode}"


def _print_table(rows: list[dict], header: str) -> None:
    print(header)
    print("| shape | stack | method | seq | tokens/s | TFLOP/s | MFU | MFU own | peak GiB "
          "| setup s | compile s | step s | case wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | {r['label']} | {r['method']} | {r['seq']} | "
                  f"error: {r['error']} |")
            continue
        mem = "-" if r.get("peak_mem_gb") is None else f"{r['peak_mem_gb']:.1f}"
        mfu = r.get("mfu", "-")
        phases = r.get("phases_s")
        setup = "-" if not phases else f"{phases['imports'] + phases['setup']:.1f}"
        print(f"| {r['shape']} | {r['label']} | {r['method']} | {r['seq']} | "
              f"{r['tokens_per_s']} | {r['tflops']} | {mfu} | {r.get('mfu_own', mfu)} | {mem} | "
              f"{setup} | {r.get('compile_s', r.get('warmup_s', '-'))} | {r['step_s']} | "
              f"{r['case_wall_s']} |")
    ok = [r for r in rows if "error" not in r]
    for r in (r for r in ok if r["stack"] == "hafrm-jax"):
        key = (r["shape"], r["seq"])
        rm = [b for b in ok if b["stack"] == "hafrm-jax" and b["method"] == "baseline"
              and (b["shape"], b["seq"]) == key]
        if r["method"] == "haf" and rm:  # against our fastest plain-RM step of that shape
            best = min(rm, key=lambda b: b["step_s"])
            print(f"{r['shape']} seq {r['seq']} ({r['label']}): HaF / plain-RM step time "
                  f"{r['step_s'] / best['step_s']:.3f} (RM: {best['label']})")
        for t in ok:
            if t["stack"] == "torch" and (t["shape"], t["method"], t["seq"]) == (
                    r["shape"], r["method"], r["seq"]):
                print(f"{r['shape']} {r['method']} seq {r['seq']} ({r['label']}): "
                      f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}x {t['label']} tokens/s")


def add_step_options(parser: argparse.ArgumentParser) -> None:
    """The step's batch and execution options that `case_model_config` reads (a case's own
    `+option=value` overrides them); --attention defaults to None, for the caller to choose."""
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="bfloat16")
    # Defaults: the fastest setting measured on an H100 (bench/RESULTS.md, round 3): every
    # layer unrolled into one program, nothing recomputed.
    parser.add_argument("--remat", default="none", choices=CASE_OPTIONS["remat"])
    parser.add_argument("--attention", default=None, choices=CASE_OPTIONS["attention"],
                        help="default: cudnn on NVIDIA GPUs, xla elsewhere")
    parser.add_argument("--chunk", type=int, default=128, help="log-prob chunk (positions)")
    parser.add_argument("--unroll", type=int, default=0,
                        help="layers per scan iteration (0: all, no loop)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(PRESETS))
    parser.add_argument("--methods", default="haf,baseline")
    parser.add_argument("--seqs", default="1024")
    parser.add_argument("--cases", default=None,
                        help="comma-separated, run in this order instead of the grid of --shape "
                             "x --methods x --seqs: shape:method:seq for our step, "
                             "shape:method:seq:eager|compile for the PyTorch reference step")
    add_step_options(parser)
    parser.add_argument("--peak-size", type=int, default=8192, help="matmul size for the peak")
    parser.add_argument("--compare-torch", action="store_true",
                        help="also run the PyTorch reference step (eager and compiled) on every "
                             "case of the grid")
    parser.add_argument("--smoke", action="store_true", help="tiny shape and lengths, for CI")
    parser.add_argument("--budget-s", type=float, default=0,
                        help="start no case after this many seconds (0: no limit)")
    parser.add_argument("--case-timeout-s", type=float, default=900)
    parser.add_argument("--json", default=None, help="append one JSON line per case here")
    parser.add_argument("--profile", default=None,
                        help="trace 3 more steps of each of our cases with the JAX profiler "
                             "into this folder (one subfolder a case; open in Perfetto or "
                             "TensorBoard), and print each trace's busiest ops")
    parser.add_argument("--bandwidth-tb-s", type=float, default=None,
                        help="memory bandwidth that --profile holds each kernel against; "
                             "default: the device's datasheet figure (H100, H200), else an "
                             "H100 SXM's")
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)  # internal: one case
    parser.add_argument("--_peak", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_measure_peak", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.smoke:
        args.shape, args.pairs, args.seqs, args.steps, args.peak_size = "tiny", 2, "64", 2, 512
    if args._measure_peak or args._one:
        # Only the subprocesses touch the device: the parent holds no GPU memory of its own.
        on_gpu = jax.default_backend() == "gpu"
        args.attention = args.attention or ("cudnn" if on_gpu else "xla")
        if args.smoke and not on_gpu:
            args.dtype = "float32"
    if args._measure_peak:  # inside the first subprocess
        print(_RESULT + json.dumps({**matmul_peak_tflops(args.peak_size),
                                    "device": jax.devices()[0].device_kind,
                                    "jax": jax.__version__, "attention": args.attention,
                                    "dtype": args.dtype}), flush=True)
        return
    if args._one:  # inside a case's subprocess
        print(_RESULT + json.dumps(_run_one(args, Case.parse(args._one), args._peak)),
              flush=True)
        return

    started = time.perf_counter()
    if args.cases:
        cases = [Case.parse(c) for c in args.cases.split(",")]
    else:
        cases = [Case.parse(f"{args.shape}:{m}:{seq}") for seq in args.seqs.split(",")
                 for m in args.methods.split(",")]
    if args.compare_torch:
        cases = with_torch_cases(cases)
    passthrough = [f"--pairs={args.pairs}", f"--steps={args.steps}", f"--dtype={args.dtype}",
                   f"--remat={args.remat}", f"--chunk={args.chunk}", f"--unroll={args.unroll}",
                   f"--peak-size={args.peak_size}"] + (["--smoke"] if args.smoke else []) \
        + ([f"--profile={args.profile}"] if args.profile else []) \
        + ([f"--bandwidth-tb-s={args.bandwidth_tb_s}"] if args.bandwidth_tb_s else []) \
        + ([f"--attention={args.attention}"] if args.attention else [])
    info, error = _spawn(passthrough + ["--_measure_peak"], args.case_timeout_s)
    if info is None:
        raise SystemExit(f"measuring the matmul peak failed: {error}")
    header = (f"# {info['device']}, jax {info['jax']}; measured bf16 matmul peak "
              f"{info['peak_tflops']:.1f} TFLOP/s ({args.peak_size}^3, median of {PEAK_SAMPLES} "
              f"samples of {PEAK_CALLS} back-to-back products; one product a sample: "
              f"{info['peak_tflops_per_call']:.1f}); "
              f"{args.pairs} pairs/step, {info['dtype']}, remat {args.remat}, "
              f"layers per scan step {args.unroll or 'all'}, "
              f"attention {info['attention']}, log-prob chunk {args.chunk}")
    print(header, flush=True)
    rows = []
    for case in cases:
        base = dict(stack=case.stack, label=case.label(), shape=case.shape, method=case.method,
                    seq=case.seq, compile=case.compile)
        if args.budget_s and time.perf_counter() - started > args.budget_s:
            print(f"skipped (budget of {args.budget_s:.0f} s spent): {case.spec()}", flush=True)
            continue
        flag_set = dict(case.options).get("xla")
        case_start = time.perf_counter()
        row, error = _spawn(passthrough + [f"--_one={case.spec()}",
                                           f"--_peak={info['peak_tflops']}"],
                            args.case_timeout_s, XLA_FLAG_SETS[flag_set] if flag_set else "")
        row = {**row, **base} if row else {**base, "error": error}
        # the whole case, process start to exit: what a time-boxed lease has to plan for
        row.update(pairs=args.pairs, device=info["device"], peak_tflops=info["peak_tflops"],
                   peak_tflops_per_call=info["peak_tflops_per_call"],
                   case_wall_s=round(time.perf_counter() - case_start, 1))
        if "tflops" in row and "mfu" not in row:  # PyTorch rows: the same measured peak
            row["mfu"] = round(row["tflops"] / info["peak_tflops"], 4)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
        if "profile" in row:
            print(f"# profile of {case.spec()} ({row['profile']['dir']}):"
                  + (f" failed: {row['profile']['error']}" if "error" in row["profile"]
                     else format_summary(row["profile"]["timelines"])
                     + f"\n\n## against the roofline ({row['profile']['bandwidth_tb_s']} TB/s, "
                     f"measured matmul peak)\n\n" + row["profile"]["against_bound"]), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    _print_table(rows, header)


if __name__ == "__main__":
    main()
