"""The paper's LoRA setting: Mistral-7B with rank-64 adapters on the MLP, on HH-RLHF.

As the authors' released code (src/train_dpo_lora.py): LoRA rank 64, alpha 16 on the MLP
projections, the reward head trained in full, lr 3e-5, 16 pairs a step, 3,200 steps; the DPO
reference is the base model with the adapters switched off. The frozen base is kept in bf16.
"""

import ml_collections

from configs import hh


def get_config() -> ml_collections.ConfigDict:
    config = hh.get_config()
    config.model.name_or_path = "mistralai/Mistral-7B-Instruct-v0.2"
    config.model.lora.rank = 64
    config.model.lora.alpha = 16.0
    config.model.lora.targets = "mlp"
    config.model.lora.base_dtype = "bfloat16"
    config.optim.learning_rate = 3e-5
    config.mesh.fsdp = -1  # shard the 7B base over all devices
    config.mesh.data = 1
    return config
