"""Reference log-probs: computed once per example with the frozen starting params, and cached.

The DPO term needs log pi_ref(y|x) for every sequence. Computing them once, before training,
costs one forward pass over the data instead of one per step, and needs no second copy of the
model while training. The cache lives in the workdir as safetensors, keyed by a fingerprint of
the tokenised data and the model, so a resumed run reuses it and a changed run recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from hafrm_jax.data.tokenize import TokenizedPairs

log = logging.getLogger(__name__)

CACHE_FILE = "reference_logps.safetensors"


def fingerprint(splits: dict[str, TokenizedPairs], model_description: dict) -> str:
    """sha256 over every split's tokens (on every host) and the reference model's description.

    Each host hashes its share; with several hosts the digests are gathered and hashed again,
    so that all of them agree on one key (and all reuse, or all recompute, the cache).
    """
    digest = hashlib.sha256(json.dumps(model_description, sort_keys=True).encode())
    for name in sorted(splits):
        data = splits[name]
        digest.update(name.encode())
        for array in (data.tokens, data.lengths, data.prompt_lengths, data.index):
            digest.update(np.ascontiguousarray(array).tobytes())
    if jax.process_count() == 1:
        return digest.hexdigest()
    from jax.experimental import multihost_utils

    local = np.frombuffer(digest.digest(), np.uint8)
    return hashlib.sha256(np.asarray(multihost_utils.process_allgather(local)).tobytes()
                          ).hexdigest()


def load_cache(workdir: str, expected_fingerprint: str) -> dict[str, np.ndarray] | None:
    """{"<split>.index": [pairs], "<split>.logps": [pairs, 2]} over whole splits, or None."""
    path = os.path.join(workdir, CACHE_FILE)
    if not os.path.exists(path):
        return None
    with safe_open(path, framework="numpy") as f:
        if (f.metadata() or {}).get("fingerprint") != expected_fingerprint:
            log.warning("%s was computed for other data or another model; recomputing", path)
            return None
        return {k: f.get_tensor(k) for k in f.keys()}


def save_cache(workdir: str, refs: dict[str, np.ndarray], fingerprint_: str) -> None:
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, CACHE_FILE)
    tmp = path + ".tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in refs.items()}, tmp,
              metadata={"fingerprint": fingerprint_})
    os.replace(tmp, path)  # atomic: a killed run never leaves half a cache
