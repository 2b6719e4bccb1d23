"""Where a step's time goes: the events of a JAX profiler trace, summed by name per timeline.

  python bench/trace_summary.py TRACE_DIR_OR_FILE [--steps=N] [--top=15]

Reads the Chrome-format trace that `jax.profiler.trace(dir, create_perfetto_trace=True)` writes
(`perfetto_trace.json.gz`, or the `*.trace.json.gz` beside it). For every timeline (thread) of
the device processes ("/device:GPU:0" and the like; the host's where there is no device, as on
CPU), it prints the share of its busy time by kind (matmul, attention, copy, reduction,
elementwise fusion, other; by kernel name) and the busiest event names: time per step, calls
and share. Timelines are summed apart because a GPU trace shows the same work on
several of them (a stream's kernels, and the XLA ops and modules derived from them).
No dependency beyond the standard library.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re


def find_trace(path: str) -> str:
    """The trace file under a `jax.profiler.trace` directory (or path itself, if a file)."""
    if os.path.isfile(path):
        return path
    for pattern in ("perfetto_trace.json.gz", "*.trace.json.gz", "*.trace.json"):
        found = sorted(glob.glob(os.path.join(path, "**", pattern), recursive=True))
        if found:
            return found[-1]  # the newest run's (directories are named by time)
    raise FileNotFoundError(f"no perfetto_trace.json.gz or *.trace.json.gz under {path}")


def load_events(path: str) -> list[dict]:
    """Trace events of a Chrome-format trace file (.json or .json.gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


# Kernel-name patterns of a category, first match wins: cuBLAS/cuBLASLt (xmma, nvjet), CUTLASS
# and Triton GEMMs, XLA CPU dots; cuDNN / flash attention; copies; XLA fusions by kind.
CATEGORIES = (
    ("matmul", re.compile(r"gemm|nvjet|xmma|cutlass|cublas|matmul|^dot|[._]dot[._]", re.I)),
    ("attention", re.compile(r"sdpa|fmha|flash|attention|cudnn", re.I)),
    ("copy", re.compile(r"memcpy|memset|copy|transpose", re.I)),
    ("reduction", re.compile(r"reduce|reduction", re.I)),
    ("elementwise fusion", re.compile(r"fusion|loop_|wrapped_", re.I)),
)


def category(name: str) -> str:
    """Coarse kind of a kernel or op, by its name: matmul, attention, copy, reduction,
    elementwise fusion or other."""
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def _process_names(events: list[dict]) -> dict:
    return {e["pid"]: e["args"]["name"] for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name"}


def _timeline_events(events: list[dict]):
    """((pid, tid), event) for every complete event ("X") of the device processes: the host's
    where the trace has no device (a CPU run)."""
    processes = _process_names(events)
    device_pids = {pid for pid, name in processes.items() if name.startswith("/device:")}
    keep = device_pids or set(processes) or {e.get("pid") for e in events}
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in keep and "dur" in e:
            yield (e["pid"], e.get("tid")), e


def summarize(events: list[dict], steps: int = 1, top: int = 15) -> list[dict]:
    """Per timeline of the device processes: {"process", "thread", "busy_ms_per_step",
    "categories": {category: share}, "ops": [{"name", "ms_per_step", "calls_per_step",
    "share"}]}, busiest timeline first.

    Complete events ("X") are summed by name; a timeline's busy time is the sum of its events'
    durations (nested events on one timeline would count twice; device timelines do not nest).
    """
    processes = _process_names(events)
    threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    totals: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    calls: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    for line, e in _timeline_events(events):
        totals[line][e.get("name", "?")] += float(e["dur"])
        calls[line][e.get("name", "?")] += 1
    out = []
    for line, by_name in totals.items():
        busy = sum(by_name.values())
        kinds = collections.Counter()
        for name, us in by_name.items():
            kinds[category(name)] += us / busy
        out.append({
            "process": processes.get(line[0], str(line[0])),
            "thread": threads.get(line, str(line[1])),
            "busy_ms_per_step": busy / 1e3 / steps,
            "categories": dict(kinds.most_common()),
            "ops": [{"name": name, "ms_per_step": us / 1e3 / steps,
                     "calls_per_step": calls[line][name] / steps, "share": us / busy}
                    for name, us in by_name.most_common(top)],
        })
    return sorted(out, key=lambda t: -t["busy_ms_per_step"])


def timeline_op_ms(events: list[dict], steps: int = 1) -> list[dict[str, float]]:
    """Per timeline of the device processes (the host's where there is no device): every op's
    ms per step, by name; a kernel whose event names its HLO op (the `hlo_op` argument) is
    counted under that op, so that a library GEMM can be matched to its instruction."""
    totals: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    for line, e in _timeline_events(events):
        name = (e.get("args") or {}).get("hlo_op") or e.get("name", "?")
        totals[line][name] += float(e["dur"]) / 1e3 / steps
    return [dict(by_name) for by_name in totals.values()]


def format_summary(timelines: list[dict], max_timelines: int = 4, width: int = 90) -> str:
    """Markdown tables of the busiest timelines."""
    lines = []
    for t in timelines[:max_timelines]:
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in t.get("categories", {}).items())
        lines += ["", f"{t['process']} / {t['thread']}: {t['busy_ms_per_step']:.2f} ms busy a "
                      f"step ({kinds})", "", "| op | ms/step | calls/step | share |",
                  "|---|---|---|---|"]
        for op in t["ops"]:
            name = op["name"] if len(op["name"]) <= width else op["name"][:width - 3] + "..."
            lines.append(f"| `{name}` | {op['ms_per_step']:.3f} | {op['calls_per_step']:g} | "
                         f"{op['share']:.1%} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a jax.profiler.trace directory, or its trace file")
    parser.add_argument("--steps", type=int, default=1, help="steps the trace holds")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--timelines", type=int, default=4)
    args = parser.parse_args()
    trace = find_trace(args.path)
    print(f"# {trace}")
    print(format_summary(summarize(load_events(trace), args.steps, args.top), args.timelines))


if __name__ == "__main__":
    main()
