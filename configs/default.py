"""The embedded default: a tiny reward model on the built-in repeat/reverse preference task.

Needs no network and no files; about a minute on a 2-core CPU. Run:
  python train.py                                  # this config
  python train.py --config.train.method=baseline   # any key can be overridden
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = model = ml_collections.ConfigDict()
    model.name_or_path = config_dict.placeholder(str)  # HF checkpoint dir or hub id; None: preset
    model.preset = "tiny"  # random init: tiny | qwen2.5-0.5b | qwen2.5-1.5b | llama-3.2-1b | ...
    model.num_layers = config_dict.placeholder(int)  # None: the preset's value
    model.hidden_size = config_dict.placeholder(int)
    model.intermediate_size = config_dict.placeholder(int)
    model.num_heads = config_dict.placeholder(int)
    model.num_kv_heads = config_dict.placeholder(int)
    model.dtype = "float32"  # compute dtype; bfloat16 on accelerators
    model.param_dtype = "float32"  # master weights
    model.remat = "none"  # none | full | dots: rematerialise each layer in the backward pass
    model.attention_impl = "xla"  # xla | cudnn (NVIDIA flash attention; right padding only)
    model.logprob_chunk = 128  # positions per chunk of LM-head logits

    config.data = data = ml_collections.ConfigDict()
    data.source = "synthetic"  # the built-in task (hafrm_jax/data/synthetic.py)
    data.num_train = 20000  # synthetic split sizes, in pairs
    data.num_validation = 500
    data.num_test = 1000
    data.seed = 0  # draws the synthetic data and the label-noise flips
    data.label_noise = 0.0  # share of training pairs with chosen and rejected swapped
    data.max_length = 32  # tokens per sequence: prompt + response + EOS
    data.max_prompt_length = 20
    data.pad_to_multiple = 16  # batches are padded to a multiple of this many tokens
    data.prompt_template = "{prompt}"  # for plain-text prompts when there is no chat template

    config.train = train = ml_collections.ConfigDict()
    train.method = "haf"  # haf: BT + alpha*DPO | baseline: BT only | dpo: alpha*DPO only
    train.alpha = 0.2  # weight of the DPO term (paper default)
    train.beta = 0.1  # DPO temperature (paper default)
    train.dpo_loss = "sigmoid"  # sigmoid | hinge | ipo
    train.label_smoothing = 0.0  # conservative labels for BT and sigmoid-DPO
    train.reward_centering = 0.0  # coefficient of (r_w + r_l)^2
    train.reference = "cached"  # cached: ref log-probs once per example | online: every step
    train.steps = 2000  # optimizer steps
    train.batch_size = 32  # pairs per optimizer step
    train.grad_accum_steps = 1  # microbatches per step (batch_size must divide evenly)
    train.seed = 0  # init and shuffling
    train.log_every = 10
    train.eval_every = 250  # validation (model selection); the test split is read once, at the end
    train.eval_batch_size = 128
    train.checkpoint_every = 500
    train.keep_checkpoints = 2

    config.optim = optim = ml_collections.ConfigDict()
    optim.learning_rate = 3e-3  # peak
    optim.schedule = "cosine"  # cosine | linear | constant (after warmup)
    optim.warmup_steps = 50
    optim.end_learning_rate_factor = 0.1  # final lr = factor * peak
    optim.weight_decay = 0.0
    optim.b1 = 0.9
    optim.b2 = 0.99
    optim.eps = 1e-8
    optim.max_grad_norm = 1.0  # global-norm clipping; 0 disables

    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.data = -1  # -1: all devices not used by the other axes
    mesh.fsdp = 1
    mesh.tensor = 1
    mesh.rules = config_dict.placeholder(tuple)  # logical-axis rules; None: the defaults

    return config
