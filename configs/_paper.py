"""The paper's training recipe, shared by the dataset recipes (not a recipe itself).

Hyper-parameters as in the authors' released code (haf-rm-anonymized/Code-for-HAF-RM,
src/train_dpo_tmp.py, full fine-tuning of Phi-2): lr 1e-5, 16 pairs a step, 3,200 steps, AdamW
with eps 1e-5, clipping at 1.0, linear decay without warmup, no weight decay; 512 tokens per
sequence of which at most 128 prompt; alpha 0.2, beta 0.1; validation every 2.5% of training.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name_or_path = "microsoft/phi-2"  # the paper's backbone; any supported model
    config.model.dtype = "bfloat16"
    config.model.remat = "dots"
    config.data.max_length = 512
    config.data.max_prompt_length = 128
    config.data.pad_to_multiple = 64
    config.data.bucket_batches = 50  # HH at 512 tokens: 62% of batch slots are padding unbucketed
    config.train.method = "haf"
    config.train.alpha = 0.2
    config.train.beta = 0.1
    config.train.batch_size = 16
    config.train.eval_batch_size = 32
    config.train.steps = 3200
    config.train.eval_every = 80
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
