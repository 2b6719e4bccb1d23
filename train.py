"""Train a HaF-RM reward model.

  python train.py                                       # the embedded default (CPU, ~1 min)
  python train.py --config=configs/hh.py --workdir=runs/hh
  python train.py --config.train.method=baseline --config.data.label_noise=0.2

The logic lives in `hafrm_jax.train.loop.train_and_evaluate`, importable from a notebook.
Running again with the same --workdir resumes from its latest checkpoint.
"""

import os
import shlex
import sys
import time

import jax

from absl import app, flags

from configs import default as default_recipe
from hafrm_jax import cli, distributed
from hafrm_jax.train.loop import train_and_evaluate

_CONFIG = cli.define_config_file(  # the default by its own path: any working directory
    "config", default_recipe.__file__, "Training recipe: a configs/*.py file.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints and metrics go; default: a new folder under runs/.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process job that the "
    "environment does not describe (TPU pods, SLURM and Open MPI need no flag).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")


def default_workdir(config_path: str) -> str:
    name = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def resume_command(argv: list[str], workdir: str) -> str:
    """This command again, --config and its overrides as given, on the same --workdir (a
    resume with other data or model settings is refused)."""
    args, rest = [], iter(argv[1:])
    for arg in rest:
        if arg in ("--workdir", "-workdir"):
            next(rest, None)  # its value, given as the next argument
        elif not arg.startswith(("--workdir=", "-workdir=")):
            args.append(arg)
    return " ".join(shlex.quote(a) for a in ["python", "train.py", *args,
                                              f"--workdir={workdir}"])


def main(argv):
    del argv
    distributed.claim_gpu_memory()  # 95% of each GPU, not JAX's 75% (before the backend starts)
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    distributed.keep_cpu_buffers()  # on CPU: no page faults every step (~1.5x)
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
    if jax.process_count() > 1 and not _WORKDIR.value:
        raise app.UsageError("a multi-process job needs an explicit --workdir that every "
                             "process sees (shared storage)")
    result = train_and_evaluate(_CONFIG.value, workdir)
    if not result.completed:
        print(f"stopped at step {result.step}; resume with: {resume_command(sys.argv, workdir)}")
        return
    test, val = result.test, result.validation
    kind = "implicit reward (DPO)" if _CONFIG.value.train.method == "dpo" else "reward head"
    print(f"workdir: {workdir}")
    print(f"validation accuracy {val['accuracy']:.4f} at step {result.best_step} (best)")
    print(f"held-out test accuracy ({kind}): {test['accuracy']:.4f} "
          f"on {int(test['num_pairs'])} pairs")


if __name__ == "__main__":
    cli.run(main)
