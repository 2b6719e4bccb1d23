"""PKU-SafeRLHF ("Beaver"), with the paper's recipe (configs/_paper.py).

As in the paper, only pairs where exactly one response is safe are kept, the safe one chosen
(`data.options.pair_selection`: better | safer | safe_vs_unsafe). The hub release has train and
test splits; validation is held out of train.
"""

import ml_collections

from configs import _paper


def get_config() -> ml_collections.ConfigDict:
    config = _paper.get_config()
    config.data.source = "beaver"
    config.data.hub.path = "PKU-Alignment/PKU-SafeRLHF"
    config.data.options = ml_collections.ConfigDict({"pair_selection": "safe_vs_unsafe"})
    return config
