"""HH-RLHF, helpful-base + harmless-base, with the paper's recipe (configs/_paper.py).

Reads Anthropic/hh-rlhf from the hub when online, or local copies of its files:
  python train.py --config=configs/hh.py \
    --config.data.hub.path= \
    --config.data.files.train=/data/hh-rlhf/helpful-base/train.jsonl.gz,/data/hh-rlhf/harmless-base/train.jsonl.gz \
    --config.data.files.test=/data/hh-rlhf/helpful-base/test.jsonl.gz,/data/hh-rlhf/harmless-base/test.jsonl.gz
Validation is held out of train (5%); the test split is only scored at the end.
"""

import ml_collections

from configs import _paper

SUBSETS = "helpful-base,harmless-base"


def get_config(subsets: str = SUBSETS) -> ml_collections.ConfigDict:
    config = _paper.get_config()
    config.data.source = "hh_rlhf"
    config.data.hub.path = "Anthropic/hh-rlhf"
    config.data.hub.data_dir = subsets
    config.data.options = ml_collections.ConfigDict({"single_turn": False})
    # The release holds a few records with an empty response or chosen/rejected dialogues that
    # differ before the last turn: skip them, counted and logged, rather than stop.
    config.data.on_error = "skip"
    return config


def single_subset(subset: str, other: str) -> ml_collections.ConfigDict:
    """One HH subset to train on; eval.py also scores the other's test split (OOD)."""
    config = get_config(subset)
    config.eval.datasets = ml_collections.ConfigDict({f"{other} (OOD)": {
        "source": "hh_rlhf", "hub_path": "Anthropic/hh-rlhf", "hub_data_dir": other,
        "split": "test"}})
    return config
