"""Orbax checkpoints of a training run: the resumable state, and the best params by validation.

workdir/checkpoints/<step>/  {state: params, opt_state, step, rng; meta: JSON (data position,
                              best validation score so far, config fingerprint)}
workdir/best/<step>/         {params; meta: JSON (step, validation metrics)}

A state refers to the best params saved at or before its step; those stay on disk until a newer
state has committed (they are written before it, and pruned only after), so a run killed
between a best save and the next state save resumes with the best its state refers to.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
killed mid-save never leaves a checkpoint that a later run would pick up. Restoring onto
abstract arrays that carry shardings lays the arrays out on the current mesh, whatever mesh
wrote them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding structs of a pytree of arrays: the restore target."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class RunCheckpoints:
    """Save and restore the state of one run; keeps the last `keep` states plus the best params."""

    def __init__(self, workdir: str, keep: int):
        workdir = os.path.abspath(workdir)
        # Saves run in the background on one host. With several processes they are made
        # synchronous: orbax's background finalisation raced on CPU multi-process runs here
        # (process 0 validated the array metadata before process 1 had written its own).
        background = jax.process_count() == 1
        self._state = ocp.CheckpointManager(
            os.path.join(workdir, "checkpoints"),
            item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=background),
        )
        self._best = ocp.CheckpointManager(
            os.path.join(workdir, "best"),
            item_names=("params", "meta"),
            # pruned by _prune_best, not by orbax: see the module docstring
            options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                                 enable_async_checkpointing=background),
        )

    def latest_step(self) -> int | None:
        return self._state.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        # The best params this state refers to are on disk before the state is; the previous
        # state has committed (orbax saves one at a time), so bests older than its are spare.
        self._best.wait_until_finished()
        self._state.wait_until_finished()
        self._prune_best(self._state.latest_step())
        self._state.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def _prune_best(self, committed: int | None) -> None:
        """Keep the newest best at or before the committed state `committed` and any newer
        one; delete the older bests."""
        if committed is None:
            return
        older = sorted(b for b in self._best.all_steps() if b <= committed)[:-1]
        for best in older:
            self._best.delete(best)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        restored = self._state.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def read_meta(self, step: int) -> dict:
        return self._state.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def save_best(self, step: int, params: Any, meta: dict) -> None:
        self._best.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)), force=True)

    def discard_best_after(self, step: int) -> None:
        """Delete best-params checkpoints newer than `step`: a run killed between validating and
        checkpointing its state will redo those steps, and must not meet its own future."""
        for best in self._best.all_steps():
            if best > step:
                self._best.delete(best)

    def best_step(self) -> int | None:
        return self._best.latest_step()

    def has_best(self, step: int) -> bool:
        return step in self._best.all_steps()

    def restore_best(self, abstract_params: Any) -> tuple[Any, dict]:
        step = self._best.latest_step()
        if step is None:
            raise FileNotFoundError("no best checkpoint has been written")
        restored = self._best.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()))
        return restored.params, restored.meta

    def wait(self) -> None:
        """Block until asynchronous saves are on disk; then only the newest state's best is
        kept."""
        self._state.wait_until_finished()
        self._best.wait_until_finished()
        self._prune_best(self._state.latest_step())

    def close(self) -> None:
        self._state.close()
        self._best.close()
