"""Baseline vs DPO vs HaF (plus an alpha sweep) over seeds and label-noise rates, one command.

  python experiments/compare.py --out=experiments/default                # the embedded default
  python experiments/compare.py --config=configs/hh_harmless.py --seeds=0,1,2 --noise=0 \
      --out=experiments/hh_harmless
  python experiments/compare.py ... --report_only        # report what finished, train nothing

Every run trains with `train_and_evaluate` in its own workdir under OUT/runs/, so an
interrupted sweep resumes where it stopped (finished runs are read back, not redone). Writes
OUT/results.json (every run), OUT/results.md (test accuracy, mean +- std over seeds, per method
and noise rate) and two plots: test accuracy against noise rate, and validation accuracy
against training step. Model selection uses validation only; the test split is read once per run.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from configs import default as default_recipe  # noqa: E402
from hafrm_jax import cli, distributed  # noqa: E402
from hafrm_jax.experiments import (Variant, run_grid, summarise,  # noqa: E402
                                   training_free_baselines, write_report)

_CONFIG = cli.define_config_file(  # the default by its own path: any working directory
    "config", default_recipe.__file__, "The recipe every run starts from.")
_OUT = flags.DEFINE_string("out", "experiments/default", "Output folder.")
_METHODS = flags.DEFINE_list("methods", ["baseline", "dpo", "haf"], "Methods at the config's "
                             "alpha and beta.")
_ALPHAS = flags.DEFINE_list("alphas", ["0.05", "1.0"], "Extra HaF runs at these alphas.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "train.seed values.")
_NOISE = flags.DEFINE_list("noise", ["0", "0.2", "0.4"], "data.label_noise rates.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Train nothing: report the finished "
                                  "runs under OUT/runs and list the missing ones.")
_BASELINES = flags.DEFINE_bool("baselines", True, "Add chance and, for a pretrained model, the "
                               "training-free mean log-prob row.")


def main(argv):
    del argv
    distributed.keep_cpu_buffers()
    variants = [Variant(m) for m in _METHODS.value]
    variants += [Variant("haf", float(a)) for a in _ALPHAS.value]
    runs = run_grid(_CONFIG.value, variants, [int(s) for s in _SEEDS.value],
                    [float(n) for n in _NOISE.value], _OUT.value,
                    train_missing=not _REPORT_ONLY.value)
    if not runs:
        raise SystemExit(f"no finished runs under {_OUT.value}/runs")
    table = summarise(runs)
    baselines = training_free_baselines(_CONFIG.value) if _BASELINES.value else None
    write_report(runs, table, _OUT.value, baselines)
    print(open(os.path.join(_OUT.value, "results.md")).read())


if __name__ == "__main__":
    cli.run(main)
