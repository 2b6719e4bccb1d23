"""The configuration schema: every key the library reads, its type and its default.

The defaults ARE the embedded default job (configs/default.py returns them unchanged); the
recipes under configs/ start from them and change what they need. `configuration.validate`
rejects keys this schema lacks and values of another type.
"""

import ml_collections
from ml_collections import config_dict


def default_config() -> ml_collections.ConfigDict:
    """Every key the library reads, with its default: the embedded default job."""
    config = ml_collections.ConfigDict()

    config.model = model = ml_collections.ConfigDict()
    model.name_or_path = config_dict.placeholder(str)  # HF checkpoint dir or hub id; None: preset
    model.preset = "tiny"  # random init: tiny | qwen2.5-0.5b | qwen2.5-1.5b | phi-2 | ...
    model.num_layers = config_dict.placeholder(int)  # None: the preset's value
    model.hidden_size = config_dict.placeholder(int)
    model.intermediate_size = config_dict.placeholder(int)
    model.num_heads = config_dict.placeholder(int)
    model.num_kv_heads = config_dict.placeholder(int)
    model.dtype = "float32"  # compute dtype; bfloat16 on accelerators
    model.param_dtype = "float32"  # master weights
    model.remat = "none"  # none | full | dots | dots_attention: per-layer recompute in backward
    model.scan_unroll = 1  # layers per scan iteration (1: one compiled layer; 0: all, no loop)
    model.attention_impl = "xla"  # xla | cudnn (NVIDIA flash attention; right padding only)
    model.logprob_chunk = 128  # positions per chunk of LM-head logits
    model.lm_head_kernel = "xla"  # xla | pallas (Triton kernels for NVIDIA GPUs; experimental)
    model.lm_head_blocks = (128, 128, 64)  # their tile: rows, vocab, depth[, warps, stages]
    model.mlp_kernel = "xla"  # xla | pallas (a Triton kernel in the MLP's backward; experimental)
    model.mlp_blocks = (128, 128, 64)  # its tile: rows, mlp, depth[, warps, stages]
    # LoRA on the backbone (rank 0: full fine-tuning). The paper's Mistral-7B runs: rank 64,
    # alpha 16 on the MLP. The base stays frozen (no optimizer state); the reward head is
    # trained in full; the DPO reference is the base with the adapters off.
    model.lora = ml_collections.ConfigDict(dict(
        rank=0, alpha=16.0, dropout=0.0,
        targets="mlp",  # mlp | attention | all | module names, e.g. "q_proj,v_proj"
        train_lm_head=False,  # also train the LM (policy) head in full
        base_dtype="",  # "bfloat16": store the frozen base in bf16 ("": model.param_dtype)
    ))

    config.data = data = ml_collections.ConfigDict()
    # synthetic (the built-in task) | hh_rlhf | beaver | alpaca_farm | chatbot_arena | generic
    data.source = "synthetic"
    data.num_train = 20000  # synthetic split sizes, in pairs
    data.num_validation = 500
    data.num_test = 1000
    # Where the records of the other sources come from: exactly one of files, hub, tfds.
    data.files = ml_collections.ConfigDict(dict(train="", validation="", test=""))  # globs, ","
    data.hub = ml_collections.ConfigDict(dict(  # Hugging Face hub dataset (needs `datasets`)
        path="", name=config_dict.placeholder(str), data_dir=config_dict.placeholder(str)))
    data.tfds = ml_collections.ConfigDict(dict(  # TFDS builder (needs the [tfds] extra)
        name="", data_dir=config_dict.placeholder(str)))
    data.splits = ml_collections.ConfigDict(dict(train="train", validation="", test="test"))
    data.validation_fraction = 0.05  # held out of train when the source has no validation split
    data.test_fraction = 0.0  # held out of train (before validation) when it has no test split
    data.options = ml_collections.ConfigDict()  # reader options, e.g. single_turn, pair_selection
    data.on_error = "raise"  # bad records: raise (file, line, field) | skip (counted, logged)
    data.max_train_pairs = 0  # 0: all; else a fixed random subset, for smoke runs
    data.max_eval_pairs = 0  # the same for validation and test
    data.seed = 0  # draws the synthetic data, the validation hold-out and the label-noise flips
    data.label_noise = 0.0  # share of training pairs with chosen and rejected swapped
    data.max_length = 32  # tokens per sequence: prompt (cut from the left) + response + EOS
    data.max_prompt_length = 20
    data.chat_format = "auto"  # auto: the tokenizer's chat template, else HH | tokenizer | hh
    data.prompt_template = "{prompt}"  # for plain-text (not chat) prompts
    data.pad_to_multiple = 16  # batches are padded to a multiple of this many tokens
    # Tokenised splits kept between runs on the same pairs, tokenizer and settings (a resume
    # reads them): a path inside the workdir, an absolute one shared by runs, "" off
    data.cache_dir = "tokenized"
    # Length bucketing: sort runs of this many batches by length (1: off). Off here: this task's
    # sequences are short, and same-length batches cut held-out accuracy from 0.970 to 0.940.
    data.bucket_batches = 1

    config.train = train = ml_collections.ConfigDict()
    train.method = "haf"  # haf: BT + alpha*DPO | baseline: BT only | dpo: alpha*DPO only
    train.alpha = 0.2  # weight of the DPO term (paper default)
    train.beta = 0.1  # DPO temperature (paper default)
    train.dpo_loss = "sigmoid"  # sigmoid | hinge | ipo
    train.label_smoothing = 0.0  # conservative labels for BT and sigmoid-DPO
    train.reward_centering = 0.0  # coefficient of (r_w + r_l)^2
    train.reference = "cached"  # cached: ref log-probs once per example | online: every step
    train.steps = 1500  # optimizer steps
    train.batch_size = 32  # pairs per optimizer step
    train.grad_accum_steps = 1  # microbatches per step (batch_size must divide evenly)
    train.seed = 0  # init and shuffling
    train.log_every = 10
    train.eval_every = 250  # validation (model selection); the test split is read once, at the end
    train.eval_batch_size = 128
    train.checkpoint_every = 500
    train.keep_checkpoints = 2  # the last K checkpoints; the best-by-validation params are kept too
    train.max_consecutive_skips = 10  # updates with a non-finite loss or gradient are skipped;
    # this many in a row stop the run
    train.check_memory = True  # GPU/TPU: before training, compile the step for the longest
    # batch and stop, naming settings that would fit, if it needs more than a device has
    train.wandb = False  # also log to Weights & Biases (pip install wandb)
    train.wandb_project = "hafrm-jax"
    # Compiled programs kept between runs of the workdir, so a resume reads rather than
    # compiles them: a path inside the workdir, an absolute one shared by runs, "" off
    train.compilation_cache_dir = "compilation_cache"
    train.allow_config_change = False  # resume even if the workdir's run used another model,
    # batch size, seed, method or data

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

    config.eval = ml_collections.ConfigDict()
    # Extra test sets for eval.py (out of distribution), name -> {source, files | hub_path,
    # hub_name, hub_data_dir | tfds_name, split, options}; the run's own test split is always in.
    config.eval.datasets = ml_collections.ConfigDict()

    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.data = -1  # -1: all devices not used by the other axes
    mesh.fsdp = 1
    mesh.tensor = 1
    mesh.rules = config_dict.placeholder(tuple)  # logical-axis rules; None: the defaults

    return config
