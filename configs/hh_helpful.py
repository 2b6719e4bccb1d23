"""HH-RLHF helpful-base alone, with the paper's recipe (see configs/hh.py); eval.py also scores
the run on harmless-base's test split, out of distribution."""

import ml_collections

from configs import hh


def get_config():
    config = hh.get_config("helpful-base")
    config.eval.datasets = ml_collections.ConfigDict({"harmless-base (OOD)": {
        "source": "hh_rlhf", "hub_path": "Anthropic/hh-rlhf", "hub_data_dir": "harmless-base",
        "split": "test"}})
    return config
