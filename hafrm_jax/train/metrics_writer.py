"""Metrics to `metrics.jsonl` (one JSON object a row), TensorBoard event files and, when
asked for, Weights & Biases.

Only process 0 writes, so a multi-host run logs once.
"""

from __future__ import annotations

import json
import logging
import math
import os

import jax

log = logging.getLogger(__name__)


class MetricsWriter:
    def __init__(self, workdir: str, resume_step: int | None = None,
                 wandb_project: str | None = None, run_config: dict | None = None):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not self.enabled:
            return
        if resume_step is not None:
            self._truncate_after(resume_step)
        from tensorboardX import SummaryWriter  # imported here: process 0 only

        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("train.wandb=True needs Weights & Biases: pip install wandb") \
                    from e
            # The run id is the workdir's name, so a resumed run continues the same W&B run.
            self._wandb = wandb.init(project=wandb_project, dir=workdir, config=run_config,
                                     id=os.path.basename(os.path.abspath(workdir)),
                                     resume="allow")

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after the checkpoint being resumed (they will be logged again) and a
        row torn by a kill mid-write (counted, logged); rewritten atomically."""
        if not os.path.exists(self.path):
            return
        kept, torn = [], 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    torn += 1
                    continue
                if row["step"] <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        if torn:
            log.warning("%s: dropped %d unreadable row(s), torn by a kill mid-write", self.path,
                        torn)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: float(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row, allow_nan=True) + "\n")
        self._file.flush()
        for key, value in metrics.items():
            if math.isfinite(float(value)):
                self._tb.add_scalar(key, float(value), int(step))
        if self._wandb is not None:
            self._wandb.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()
            if self._wandb is not None:
                self._wandb.finish()
