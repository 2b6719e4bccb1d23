"""HH-RLHF harmless-base alone, with the paper's recipe (see configs/hh.py)."""

from configs import hh


def get_config():
    return hh.get_config("harmless-base")
