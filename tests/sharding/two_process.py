"""One process of a job training one model over 8 CPU devices: one of two processes (4 devices
each, via localhost), or a process alone (8 devices). The same small run either way.

usage: two_process.py PORT PROCESS_ID WORKDIR [NUM_PROCESSES=2] [STOP_AFTER_STEP]
"""

import json
import sys

port, process_id, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
num_processes = int(sys.argv[4]) if len(sys.argv) > 4 else 2
stop_after = int(sys.argv[5]) if len(sys.argv) > 5 else None

from hafrm_jax import distributed  # noqa: E402

if num_processes > 1:
    distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes,
                           process_id=process_id, cpu_collectives="gloo")

import jax  # noqa: E402

from configs.default import get_config  # noqa: E402

from hafrm_jax.train.loop import train_and_evaluate  # noqa: E402

config = get_config()
config.model.num_layers, config.model.hidden_size, config.model.intermediate_size = 1, 32, 64
config.data.num_train, config.data.num_validation, config.data.num_test = 96, 20, 20
config.data.label_noise = 0.1  # drawn over the split: the same pairs on any number of hosts
config.train.steps, config.train.batch_size, config.train.log_every = 4, 8, 2
config.train.eval_every, config.train.eval_batch_size = 4, 16
config.optim.warmup_steps = 1
config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
stop = None if stop_after is None else (lambda step: step == stop_after)
result = train_and_evaluate(config, workdir, stop_condition=stop)
print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(),
                  "local_devices": jax.local_device_count(), "step": result.step,
                  "train_loss": result.last_train_metrics["train/loss"],
                  "validation": result.validation, "test": result.test}))
