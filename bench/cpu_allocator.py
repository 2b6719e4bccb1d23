"""The default job on CPU with glibc's malloc as it comes, and as `keep_cpu_buffers` sets it.

XLA:CPU mallocs each call's temporaries; with glibc's defaults they go back to the kernel after
every call and the next call page-faults them in again. train.py and experiments/compare.py
call `hafrm_jax.distributed.keep_cpu_buffers()`; this runs the same training in a fresh process
per setting, alternating (`--repeat` rounds), and prints each run's wall time, CPU time in user
space and in the kernel, minor page faults and peak resident memory (the child's own rusage).

  python bench/cpu_allocator.py              # the default job (1,500 steps), 2 rounds
  python bench/cpu_allocator.py --steps=300 --repeat=3
  python bench/cpu_allocator.py --smoke      # 8 steps (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETTINGS = ("glibc defaults", "keep_cpu_buffers")

# The child: the default recipe through the library (train.py would always keep the buffers).
CHILD = """
import json, sys
from bench.recipes import shorten
from configs import default
from hafrm_jax import distributed
from hafrm_jax.train.loop import train_and_evaluate

setting, steps, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = default.get_config()
shorten(config, steps)
print(json.dumps({"kept": distributed.keep_cpu_buffers() if setting == "keep_cpu_buffers"
                  else False, "accuracy": train_and_evaluate(config, workdir).test["accuracy"]}))
"""


def run_once(setting: str, steps: int, workdir: str) -> dict:
    """One training in a child process: its result line and its own resource usage."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, setting, str(steps), workdir],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"{setting}: the child exited with status {status}")
    result = json.loads(out.strip().splitlines()[-1])
    return {"setting": setting, "kept": result["kept"], "accuracy": result["accuracy"],
            "wall_s": wall, "user_s": usage.ru_utime, "kernel_s": usage.ru_stime,
            "minor_faults": usage.ru_minflt, "peak_rss_mb": usage.ru_maxrss / 1024}


def format_table(rows: list[dict]) -> str:
    lines = ["| setting | wall s | user CPU s | kernel CPU s | minor page faults | peak RSS MB "
             "| held-out accuracy |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['wall_s']:.1f} | {r['user_s']:.1f} | "
                     f"{r['kernel_s']:.1f} | {r['minor_faults'] / 1e6:.2f}M | "
                     f"{r['peak_rss_mb']:.0f} | {r['accuracy']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the recipe's)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds, each setting once a round")
    parser.add_argument("--smoke", action="store_true", help="8 steps, one round")
    args = parser.parse_args(argv)
    steps, repeat = (8, 1) if args.smoke else (args.steps, args.repeat)
    print(f"# the default job ({steps or 'all its'} steps) on {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            for setting in SETTINGS:
                rows.append(run_once(setting, steps, os.path.join(tmp, f"{setting}-{i}")))
                print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print(format_table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
