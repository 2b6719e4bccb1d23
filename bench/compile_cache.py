"""A resumed run with the workdir's compilation cache, and without it.

One run trains to `--stop-at` steps and stops (as after a preemption); its workdir is put
aside, and each resume starts from a fresh copy of it, at the first run's path (JAX's keys hold
the cache's path), in a fresh process: one reading the programs the first run compiled
(`train.compilation_cache_dir`, the default), one with the cache removed and off. Prints each
process's wall time, what compiling cost it (programs, seconds compiling or reading, programs
read from the cache, compile time saved; JAX's own events) and its test accuracy, which must not
depend on where the programs came from. `--config` and its `--config.KEY=VALUE` overrides are
train.py's.

  python bench/compile_cache.py                          # the default job, stopped at 750
  python bench/compile_cache.py --repeat=3
  python bench/compile_cache.py --config=configs/smollm2_hh.py --steps=4 --stop-at=2 \
      --config.train.batch_size=2 --config.data.max_length=128
  python bench/compile_cache.py --smoke                  # 4 steps (CI)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The child: a recipe through the library, on the CPU allocator setting train.py uses.
CHILD = """
import json, sys
from bench.recipes import shorten
from hafrm_jax import cli, distributed
from hafrm_jax.train.loop import train_and_evaluate

workdir, steps, stop_at, cache = sys.argv[1:5]
recipe = cli.define_config_file("config", None, "the recipe")
cli.parse_flags([sys.argv[0], *sys.argv[5:]])  # --config=FILE --config.KEY=VALUE ...
config = recipe.value
shorten(config, int(steps))
config.train.compilation_cache_dir = cache
distributed.keep_cpu_buffers()
stop = int(stop_at) or config.train.steps // 2  # 0: half way; -1: to the end
result = train_and_evaluate(config, workdir, (lambda step: step >= stop) if stop > 0 else None)
print(json.dumps({"step": result.step, "compiling": result.compiling.as_dict(),
                  "accuracy": result.test["accuracy"] if result.test else None}))
"""


def run_child(config: str, workdir: str, steps: int, stop_at: int, cache: str,
              overrides: list[str], min_compile_s: float | None = None) -> dict:
    """One training process; its result line, with its wall time."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    if min_compile_s is not None:  # JAX keeps programs that took at least this long
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(min_compile_s)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, workdir, str(steps), str(stop_at), cache,
                          f"--config={config}", *overrides], cwd=ROOT, capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the child exited with status {out.returncode}:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def format_table(rows: list[dict]) -> str:
    lines = ["| process | to step | wall s | programs | compiling or reading s | read from cache "
             "| compile s saved | test accuracy |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["compiling"]
        accuracy = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(f"| {r['process']} | {r['step']} | {r['wall_s']:.1f} | {c['programs']} | "
                     f"{c['seconds']:.1f} | {c['read_from_cache']} | {c['seconds_saved']:.1f} | "
                     f"{accuracy} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.py"))
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the recipe's)")
    parser.add_argument("--stop-at", type=int, default=0, help="where the first run stops "
                        "(0: half of the steps)")
    parser.add_argument("--repeat", type=int, default=1, help="resumes of each kind")
    parser.add_argument("--min-compile-s", type=float, default=None, help="keep programs that "
                        "took at least this long to compile (JAX's default: 1 s)")
    parser.add_argument("--smoke", action="store_true", help="4 steps, stopped at 2, every "
                        "program kept")
    args, overrides = parser.parse_known_args(argv)
    if any(not arg.startswith("--config.") for arg in overrides):
        parser.error(f"unrecognized arguments: {' '.join(overrides)} (overrides are "
                     "--config.KEY=VALUE)")
    steps, stop_at, repeat, min_compile_s = (4, 2, 1, 0.0) if args.smoke else (
        args.steps, args.stop_at, args.repeat, args.min_compile_s)
    run = functools.partial(run_child, os.path.abspath(args.config), overrides=overrides,
                            min_compile_s=min_compile_s)
    print(f"# {os.path.relpath(args.config, ROOT)} {' '.join(overrides)}: stopped at step "
          f"{stop_at or 'steps / 2'}, then resumed; {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # Every run at the same path: JAX's cache keys hold the cache's own path (XLA's GPU
        # autotuning cache inside it), so a moved workdir compiles again.
        workdir, stopped = os.path.join(tmp, "run"), os.path.join(tmp, "stopped")
        rows.append(dict(run(workdir, steps, stop_at, "compilation_cache"),
                         process="first run, stopped (writes the cache)"))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        shutil.copytree(workdir, stopped)
        kinds = [("cache", "compilation_cache"), ("no cache", "")]
        for i in range(repeat):
            for kind, cache in kinds if i % 2 == 0 else kinds[::-1]:
                shutil.rmtree(workdir)
                shutil.copytree(stopped, workdir)
                if not cache:
                    shutil.rmtree(os.path.join(workdir, "compilation_cache"))
                rows.append(dict(run(workdir, steps, -1, cache), process=f"resumed, {kind}"))
                print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print(format_table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
