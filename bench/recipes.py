"""What the benches that train a whole recipe in a child process share."""

from __future__ import annotations

import ml_collections


def shorten(config: ml_collections.ConfigDict, steps: int) -> None:
    """Train `config` for `steps` optimizer steps (0: as the recipe says), its validation,
    checkpoint and warmup intervals cut to fit inside them."""
    if not steps:
        return
    config.train.steps = steps
    config.train.eval_every = min(config.train.eval_every, steps)
    config.train.checkpoint_every = min(config.train.checkpoint_every, steps)
    config.optim.warmup_steps = min(config.optim.warmup_steps, steps // 2)
