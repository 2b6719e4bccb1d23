"""The embedded default: a tiny reward model on the built-in repeat/reverse preference task.

Needs no network and no files; under a minute on a 2-core CPU. Run:
  python train.py                                  # this config
  python train.py --config.train.method=baseline   # any key can be overridden

Every key, with its meaning, is listed in hafrm_jax/config_schema.py.
"""

import ml_collections

from hafrm_jax.config_schema import default_config


def get_config() -> ml_collections.ConfigDict:
    return default_config()
