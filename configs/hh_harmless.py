"""HH-RLHF harmless-base alone, with the paper's recipe (see configs/hh.py); eval.py also scores
the run on helpful-base's test split, out of distribution."""

from configs import hh


def get_config():
    return hh.single_subset("harmless-base", other="helpful-base")
