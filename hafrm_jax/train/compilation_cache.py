"""A run's compiled programs kept on disk (JAX's persistent compilation cache), so that running
again in the same workdir (a resume after a preemption or a stop) reads them instead of
compiling the training step, the scoring passes and the initialisation again.

The step is compiled once per padded batch length (up to max_length / pad_to_multiple shapes),
and its compile time grows with the model and the mesh: a resumed run on an accelerator spends
that much again before its first step. JAX keys each entry by the program, the compile options,
the devices and the jax/XLA versions, so a changed config or install compiles afresh, and only
process 0 writes (the other processes of a job read). The keys also hold the cache's own
path (XLA's GPU autotuning results go inside it), so a workdir moved elsewhere compiles again.
JAX stores only programs that took at least `jax_persistent_cache_min_compile_time_secs`
(default 1 s) to compile. An entry cut short (a kill while writing) is warned about and
compiled again.

The entries are machine code that the resumed run executes: like JAX's own cache, one is only
as trustworthy as whoever could write the workdir.

A cache the user set up for JAX itself (JAX_COMPILATION_CACHE_DIR, or jax.config.update
before training) is used as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

log = logging.getLogger(__name__)

# JAX's monitoring events (jax/_src/compiler.py, dispatch.py).
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
CACHE_HIT = "/jax/compilation_cache/cache_hits"
TIME_SAVED = "/jax/compilation_cache/compile_time_saved_sec"


@dataclasses.dataclass
class CompileReport:
    """What getting this process's programs cost while the cache was in place."""

    directory: str | None
    programs: int = 0  # executables the backend compiled or read from the cache
    seconds: float = 0.0  # spent on them, compiling or reading
    read: int = 0  # of them, read from the cache
    saved_s: float = 0.0  # their compile times (in whole seconds, as JAX keeps them) less reading

    def summary(self) -> str:
        cache = f"read from {self.directory}" if self.directory else "no compilation cache"
        return (f"compiling: {self.programs} programs in {self.seconds:.1f}s, {self.read} of "
                f"them {cache} (~{self.saved_s:.1f}s of compiling saved)")

    def as_dict(self) -> dict:
        return {"programs": self.programs, "seconds": round(self.seconds, 1),
                "read_from_cache": self.read, "seconds_saved": round(self.saved_s, 1),
                "cache": self.directory}


@contextlib.contextmanager
def persistent_compilation_cache(directory: str | None) -> Iterator[CompileReport]:
    """Compile into and read from `directory` inside the block (None: no cache of ours), and
    count what compiling cost. JAX's setting is restored afterwards, so that compiles after
    the block (a notebook's next run) do not land in this run's workdir."""
    own = jax.config.jax_compilation_cache_dir
    if own:
        log.info("using the compilation cache set for JAX itself: %s", own)
    elif directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax_cache.reset_cache()  # JAX reads the directory when it first needs the cache
    report = CompileReport(own or directory)

    def on_event(event: str, **_) -> None:
        if event == CACHE_HIT:
            report.read += 1

    def on_duration(event: str, seconds: float, **_) -> None:
        if event == BACKEND_COMPILE:  # a compile, or a read from the cache
            report.programs += 1
            report.seconds += seconds
        elif event == TIME_SAVED:
            report.saved_s += seconds

    jax.monitoring.register_event_listener(on_event)
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        yield report
    finally:
        jax.monitoring.unregister_event_listener(on_event)
        jax.monitoring.unregister_event_duration_listener(on_duration)
        if directory and not own:
            jax.config.update("jax_compilation_cache_dir", own)  # unset, as it was
            jax_cache.reset_cache()
