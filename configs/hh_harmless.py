"""HH-RLHF harmless-base alone, with the paper's recipe (see configs/hh.py); eval.py also scores
the run on helpful-base's test split, out of distribution."""

import ml_collections

from configs import hh


def get_config():
    config = hh.get_config("harmless-base")
    config.eval.datasets = ml_collections.ConfigDict({"helpful-base (OOD)": {
        "source": "hh_rlhf", "hub_path": "Anthropic/hh-rlhf", "hub_data_dir": "helpful-base",
        "split": "test"}})
    return config
