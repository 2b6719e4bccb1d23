"""Chatbot Arena conversations, with the paper's recipe (configs/_paper.py).

Ties are dropped and counted; multi-turn conversations whose histories diverged are dropped and
counted. The release (gated on the hub: accept its terms first) has one split: 5% is held out
as test (as the paper's code does), then 5% of the rest as validation.
"""

import ml_collections

from configs import _paper


def get_config() -> ml_collections.ConfigDict:
    config = _paper.get_config()
    config.data.source = "chatbot_arena"
    config.data.hub.path = "lmsys/chatbot_arena_conversations"
    config.data.splits.test = ""
    config.data.test_fraction = 0.05
    return config
