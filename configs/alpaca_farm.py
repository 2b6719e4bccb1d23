"""AlpacaFarm human preferences, with the paper's recipe (configs/_paper.py).

The release has one split ("preference"): 10% of it is held out as test (as the paper's code
does), then 5% of the rest as validation.
"""

import ml_collections

from configs import _paper


def get_config() -> ml_collections.ConfigDict:
    config = _paper.get_config()
    config.data.source = "alpaca_farm"
    config.data.hub.path = "tatsu-lab/alpaca_farm"
    config.data.hub.name = "alpaca_human_preference"
    config.data.splits.train = "preference"
    config.data.splits.test = ""
    config.data.test_fraction = 0.1
    return config
