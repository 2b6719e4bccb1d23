"""What the kernel sweeps share (bench/lm_head_sweep.py, bench/mlp_kernel_sweep.py): running each
configuration once within a time budget, a configuration that fails reported as an error row
while the rest go on, each row printed and appended to a JSON-lines file as it comes, and the
fastest kernel row of such a file read back (`--print-best`, to time it in the whole step), and
the command-line options for all that."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import jax
import numpy as np


def parse_sweep_args(parser: argparse.ArgumentParser, argv: list[str] | None, smoke: list[str],
                     best_options: Callable[[list[dict]], str]) -> argparse.Namespace | None:
    """`parser`'s arguments plus the sweeps' own (--budget-s, --json, --smoke, --print-best).
    With --print-best, prints `best_options` of that file's rows and returns None (the caller
    exits); with --smoke, the `smoke` arguments come first, so that the user's still win."""
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no configuration after this many seconds")
    parser.add_argument("--json", default=None, help="append each row to this JSON-lines file")
    parser.add_argument("--smoke", action="store_true", help=f"tiny: {' '.join(smoke)}")
    parser.add_argument("--print-best", metavar="JSONL", default=None,
                        help="print the case options (bench/train_step.py) of the fastest "
                        "kernel row in this file of an earlier sweep, and exit")
    args = parser.parse_args(argv)
    if args.print_best:
        print(best_options(read_rows(args.print_best)))
        return None
    if args.smoke:
        args = parser.parse_args(smoke + (argv if argv is not None else sys.argv[1:]))
    return args


def relative_error(result, reference) -> float:
    """The largest difference over the leaves of `result` from `reference`'s, over that leaf's
    largest magnitude."""
    worst = 0.0
    for got, want in zip(jax.tree.leaves(result), jax.tree.leaves(reference)):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        worst = max(worst, float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)))
    return worst


def run_sweep(configs, time_one, *, budget_s: float | None, json_path: str | None,
              common: dict) -> list[dict]:
    """A row per configuration: `time_one(config, reference)` -> (row, result), where reference
    is the first result that ran (None for the first). A configuration that raises (one Triton
    cannot compile, say) is an error row with the first line of its message; none starts after
    `budget_s` seconds. Each row gets `common` and is printed (and appended to `json_path`)."""
    rows, reference, start = [], None, time.perf_counter()
    for config in configs:
        if budget_s is not None and time.perf_counter() - start > budget_s:
            print(f"# budget spent: skipped {config.describe()}", flush=True)
            continue
        try:
            row, result = time_one(config, reference)
            reference = result if reference is None else reference
        except Exception as e:  # noqa: BLE001 - a configuration Triton refuses, reported
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            row = {**config.describe(), "error": f"{type(e).__name__}: {first_line}"}
        row.update(common)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if json_path:
            with open(json_path, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def read_rows(json_path: str) -> list[dict]:
    """The rows of a sweep's JSON-lines file."""
    with open(json_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def fastest_agreeing(rows: list[dict], variant: str, max_rel_err: float = 1e-2) -> dict | None:
    """The fastest `variant` row that ran and agreed with the reference (rel err below
    `max_rel_err`, or none measured), or None where no row did."""
    ran = [r for r in rows if r["variant"] == variant and "error" not in r
           and (r["rel_err"] is None or r["rel_err"] < max_rel_err)]
    return min(ran, key=lambda r: r["ms"]) if ran else None
