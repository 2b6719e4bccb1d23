"""hafrm-jax: HaF-RM hybrid reward-model training in JAX/Flax.

Layout: `model` (decoder, heads, readout), `losses` and `objective` (pure math), `data`
(readers, tokenisation, batching), `sharding`, `checkpoint`, `train` (loop), `evaluation`.
"""

import os

# transformers is used for tokenizers and configs only; its "PyTorch was not found" notice is
# noise here. Users who want its logs can set TRANSFORMERS_VERBOSITY themselves.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"
