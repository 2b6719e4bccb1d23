"""Benchmark hafrm-jax's training step: tokens/s, model TFLOP/s, MFU, peak memory, compile time.

  python bench/train_step.py --smoke                          # tiny, any machine (CI runs this)
  python bench/train_step.py --shape=qwen2.5-0.5b --methods=haf,baseline --seqs=1024
  python bench/train_step.py --shape=qwen2.5-0.5b --seqs=512,1024,2048,4096 --compare-torch

The step is the library's own (`hafrm_jax.train.step.train_step`: one forward over chosen and
rejected, chunked LM-head log-probs, AdamW with float32 master weights), on random weights of a
real shape, with precomputed reference log-probs, as in the issue's PyTorch anchor.

FLOPs per step (the anchor's formula, forward x 3 for forward + backward):
  3 * tokens * (L * (2 * (d*d + 2*d*kv + d*d) + 6*d*ff + 2*T*d) + [2*d*V with the LM head])
where kv = num_kv_heads * head_dim, T the sequence length (causal attention: half of 4*T*d),
and the LM-head term only for methods that use it (haf, dpo). MFU divides model TFLOP/s by the
bf16 matmul peak measured at start-up on the same device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from hafrm_jax.model.config import PRESETS, ModelConfig  # noqa: E402
from hafrm_jax.objective import LossConfig, ObjectiveConfig  # noqa: E402
from hafrm_jax.sharding import DEFAULT_RULES, batch_sharding, make_mesh  # noqa: E402
from hafrm_jax.train.optimizer import make_optimizer  # noqa: E402
from hafrm_jax.train.state import create_train_state, init_params  # noqa: E402
from hafrm_jax.train.step import train_step  # noqa: E402


def step_flops(cfg: ModelConfig, pairs: int, seq: int, with_lm_head: bool) -> float:
    d, ff, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
    kv = cfg.num_kv_heads * cfg.dim_per_head
    per_layer = 2 * (d * d + 2 * d * kv + d * d) + 2 * 3 * d * ff
    attention = 2 * 2 * seq * d / 2
    forward = layers * (per_layer + attention) + (2 * d * vocab if with_lm_head else 0)
    return 3 * forward * (2 * pairs * seq)


def matmul_peak_tflops(size: int, dtype=jnp.bfloat16, repeats: int = 10) -> float:
    """Measured dense matmul throughput of the first device, in TFLOP/s."""
    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.block_until_ready()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12


def peak_memory_gb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def run_case(cfg: ModelConfig, method: str, pairs: int, seq: int, steps: int,
             peak_tflops: float) -> dict:
    mesh = make_mesh()
    optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-5, schedule="constant", warmup_steps=0, end_learning_rate_factor=1.0,
        weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0))
    optimizer, schedule = make_optimizer(optim, steps + 3)
    params, params_sh = init_params(cfg, 0, mesh, DEFAULT_RULES)
    state, state_sh = create_train_state(params, params_sh, optimizer, 0, mesh)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, cfg.vocab_size, size=(pairs, 2, seq), dtype=np.int32)
    response = np.zeros((pairs, 2, seq), np.int32)
    response[..., seq // 2:] = 1  # second half is the response, as in the anchor
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "response_mask": response,
             "ref_logps": rng.normal(-seq / 2, 10, size=(pairs, 2)).astype(np.float32)}
    batch = jax.device_put(batch, batch_sharding(mesh, DEFAULT_RULES))
    loss_config = LossConfig(cfg, ObjectiveConfig(method, alpha=0.2, beta=0.1))
    fn = jax.jit(lambda s, b: train_step(s, b, None, None, loss_config=loss_config,
                                         optimizer=optimizer, schedule=schedule,
                                         grad_accum_steps=1), donate_argnums=0)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        compiled = fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        for _ in range(2):  # warm-up
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - start) / steps
    tokens = 2 * pairs * seq
    tflops = step_flops(cfg, pairs, seq, method != "baseline") / step_s / 1e12
    return dict(stack="hafrm-jax", method=method, pairs=pairs, seq=seq, step_s=round(step_s, 4),
                tokens_per_s=round(tokens / step_s), tflops=round(tflops, 2),
                mfu=round(tflops / peak_tflops, 4), peak_mem_gb=peak_memory_gb(),
                compile_s=round(compile_s, 1), loss=float(metrics["loss/total"]),
                device=jax.devices()[0].device_kind)


def run_torch(shape: str, method: str, pairs: int, seq: int, steps: int, compile_: bool) -> dict:
    """The PyTorch + transformers reference step of the issue, in this same process."""
    from bench.torch_reference import run as torch_run

    return torch_run(shape, "rm" if method == "baseline" else "haf", pairs, seq, steps, compile_)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(PRESETS))
    parser.add_argument("--methods", default="haf,baseline")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seqs", default="1024")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--remat", default="dots", choices=["none", "full", "dots"])
    parser.add_argument("--attention", default=None, choices=["xla", "cudnn"],
                        help="default: cudnn on NVIDIA GPUs, xla elsewhere")
    parser.add_argument("--chunk", type=int, default=128, help="log-prob chunk (positions)")
    parser.add_argument("--peak-size", type=int, default=8192, help="matmul size for the peak")
    parser.add_argument("--compare-torch", action="store_true",
                        help="also run the PyTorch reference step (eager and compiled)")
    parser.add_argument("--smoke", action="store_true", help="tiny shape and lengths, for CI")
    parser.add_argument("--json", default=None, help="append one JSON line per case here")
    args = parser.parse_args()

    on_gpu = jax.default_backend() == "gpu"
    attention = args.attention or ("cudnn" if on_gpu else "xla")
    if args.smoke:
        args.shape, args.pairs, args.seqs, args.steps, args.peak_size = "tiny", 2, "64", 2, 512
        args.dtype = "float32" if not on_gpu else args.dtype
    cfg = dataclasses.replace(PRESETS[args.shape], dtype=args.dtype, remat=args.remat,
                              attention_impl=attention, logprob_chunk=args.chunk)
    peak = matmul_peak_tflops(args.peak_size)
    print(f"# {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}; "
          f"measured bf16 matmul peak {peak:.1f} TFLOP/s ({args.peak_size}^3)", flush=True)
    rows = []
    for seq in [int(s) for s in args.seqs.split(",")]:
        for method in args.methods.split(","):
            row = run_case(cfg, method, args.pairs, seq, args.steps, peak)
            row.update(shape=args.shape, attention=attention, remat=args.remat)
            rows.append(row)
            if args.compare_torch:
                for compile_ in (False, True):
                    try:
                        torch_row = run_torch(args.shape, method, args.pairs, seq, args.steps,
                                              compile_)
                    except Exception as e:  # e.g. out of memory: report and go on
                        torch_row = dict(stack="torch", method=method, seq=seq,
                                         compile=compile_, error=repr(e)[:200])
                    rows.append(torch_row)
    print("| stack | method | seq | tokens/s | TFLOP/s | MFU | peak GB | compile s | step s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['stack']} | {r['method']} | {r['seq']} | error: {r['error']} |")
            continue
        stack = r["stack"] + (" compile" if r.get("compile") else "")
        mem = "-" if r.get("peak_mem_gb") is None else f"{r['peak_mem_gb']:.1f}"
        print(f"| {stack} | {r['method']} | {r['seq']} | {r['tokens_per_s']} | {r['tflops']} | "
              f"{r.get('mfu', '-')} | {mem} | {r.get('compile_s', r.get('warmup_s', '-'))} | "
              f"{r['step_s']} |")
    ours = {(r["method"], r["seq"]): r for r in rows if r["stack"] == "hafrm-jax"}
    for (method, seq), r in ours.items():
        if method == "haf" and ("baseline", seq) in ours:
            print(f"HaF / plain-RM step time at seq {seq}: "
                  f"{r['step_s'] / ours[('baseline', seq)]['step_s']:.3f}")
        for t in rows:
            if t["stack"] == "torch" and "error" not in t and t["method"] == method and \
                    t["seq"] == seq:
                kind = "torch.compile" if t["compile"] else "PyTorch eager"
                print(f"{method} seq {seq}: {r['tokens_per_s'] / t['tokens_per_s']:.2f}x {kind}")
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
