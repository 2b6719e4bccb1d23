"""HH-RLHF (helpful-base + harmless-base) with the paper's recipe.

Needs a pretrained backbone and its tokenizer (`model.name_or_path`) and the HH-RLHF reader;
until both are available this config stops before training with a message saying so.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.preset = "qwen2.5-0.5b"
    config.model.dtype = "bfloat16"
    config.model.remat = "dots"
    config.data.source = "hh_rlhf"
    config.data.max_length = 512  # paper: 512 tokens per sequence, 128 for the prompt
    config.data.max_prompt_length = 128
    config.data.pad_to_multiple = 64
    config.train.method = "haf"
    config.train.alpha = 0.2  # paper defaults
    config.train.beta = 0.1
    config.train.batch_size = 16  # pairs per step, as in the paper
    config.train.eval_batch_size = 32
    # The authors' released code (haf-rm-anonymized/Code-for-HAF-RM, src/train_dpo_tmp.py, full
    # fine-tuning of Phi-2): lr 1e-5, 16 pairs a step, 3,200 steps, AdamW with eps 1e-5,
    # gradient clipping at 1.0, linear decay without warmup, no weight decay.
    config.train.steps = 3200
    config.train.eval_every = 80  # every 2.5% of training, as the released code evaluates
    config.train.checkpoint_every = 400
    config.optim.learning_rate = 1e-5
    config.optim.schedule = "linear"
    config.optim.warmup_steps = 0
    config.optim.end_learning_rate_factor = 0.0
    config.optim.b2 = 0.999
    config.optim.eps = 1e-5
    config.optim.weight_decay = 0.0
    config.optim.max_grad_norm = 1.0
    return config
