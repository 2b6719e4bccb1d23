"""The PNG of a run's curves, drawn from its metrics.jsonl at the end of training."""

from __future__ import annotations

import json
import os
import sys

PANELS = (
    ("loss", ("train/loss", "train/loss/bt", "train/loss/dpo")),
    ("validation accuracy", ("eval/accuracy", "eval/reward_accuracy", "eval/implicit_accuracy")),
    ("margin (chosen - rejected)", ("train/reward/margin", "train/implicit/margin")),
)


def _import_matplotlib(cache_dir: str | None) -> None:
    """Import matplotlib with its config and font cache in `cache_dir` where this process has
    not imported it yet (a run writes nothing outside its workdir, HOME included); the
    environment is left as it was."""
    if cache_dir is None or "matplotlib" in sys.modules:
        return
    previous = os.environ.get("MPLCONFIGDIR")
    os.environ["MPLCONFIGDIR"] = cache_dir
    try:
        import matplotlib.font_manager  # noqa: F401  builds (or reads) the font cache there
    finally:
        if previous is None:
            del os.environ["MPLCONFIGDIR"]
        else:
            os.environ["MPLCONFIGDIR"] = previous


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 4),
               cache_dir: str | None = None, **subplots):
    """(figure, axes) drawn off-screen, for `figure.savefig`: a matplotlib Figure that pyplot
    never sees, so neither its global backend nor its open figures change (a notebook that
    trains, then plots with pyplot, still shows its plots). `cache_dir`: see
    `_import_matplotlib`."""
    _import_matplotlib(cache_dir)
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots)


def plot_training_curves(workdir: str, filename: str = "curves.png") -> str:
    """Loss terms, validation accuracy and margins against step; returns the PNG's path."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    fig, axes = new_figure(1, len(PANELS), figsize=(5 * len(PANELS), 3.6),
                           cache_dir=os.path.join(workdir, ".matplotlib"))
    for ax, (title, keys) in zip(axes, PANELS):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), marker="." if key.startswith("eval") else None,
                        label=key.split("/", 1)[1])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, filename)
    fig.savefig(path, dpi=110)
    return path
