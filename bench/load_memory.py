"""Peak host memory of loading a Hugging Face checkpoint: streamed (ours) against load-all.

  python bench/load_memory.py [--layers 12 --hidden 768 ...]

Builds a random-weight Llama-shaped checkpoint (float32 safetensors, ~540 MB by default) with
transformers + torch (the [parity] extra), then loads it in fresh processes and reports
resident-memory figures. On a CPU the "devices" live in host memory too, so the loaded params
themselves count; what the streaming saves is the transient on top of them.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys, time
def rss_mb():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS'):
                return int(line.split()[1]) / 1024
mode, directory = sys.argv[1], sys.argv[2]
import jax, numpy as np
from hafrm_jax.hf.checkpoint import pretrained_model_config
from hafrm_jax.sharding import DEFAULT_RULES, make_mesh
from hafrm_jax.train.state import abstract_params, param_shardings
cfg = pretrained_model_config(directory)
mesh = make_mesh(data=1, fsdp=-1)
shardings = param_shardings(cfg, mesh, DEFAULT_RULES)
abstract = abstract_params(cfg)
base = rss_mb()
start = time.time()
if mode == 'streamed':
    from hafrm_jax.hf.weights import load_params
    params = load_params(directory, cfg, shardings, abstract)
else:  # load every tensor into host memory first, then convert and place
    from safetensors.numpy import load_file
    from hafrm_jax.hf.weights import tensor_maps
    raw = load_file(os.path.join(directory, 'model.safetensors'))
    leaves = []
    for tmap, shape, sharding in zip(tensor_maps(abstract, cfg), jax.tree_util.tree_leaves(abstract),
                                     jax.tree_util.tree_leaves(shardings)):
        names = [tmap.hf_name.format(i=i) for i in range(cfg.num_layers)] if tmap.stacked else [tmap.hf_name]
        names = [n for n in names if n in raw] or [n for n in ['model.embed_tokens.weight'] if tmap.path[0] == 'lm_head']
        if tmap.path[0] == 'reward_head':
            arr = np.zeros(shape.shape, np.float32)
        else:
            parts = [(raw[n].T if tmap.transpose else raw[n]) for n in names]
            arr = (np.stack(parts) if tmap.stacked else parts[0]).reshape(shape.shape)
        leaves.append(jax.device_put(arr, sharding))
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), leaves)
jax.block_until_ready(params)
elapsed = time.time() - start
param_mb = sum(x.nbytes for x in jax.tree_util.tree_leaves(params)) / 2**20
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(mode=mode, devices=len(jax.devices()), params_mb=round(param_mb),
                      base_rss_mb=round(base), peak_rss_mb=round(peak),
                      transient_mb=round(peak - base - param_mb), seconds=round(elapsed, 1))))
"""


def build_checkpoint(directory, layers, hidden, intermediate, vocab):
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=4)
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(directory, max_shard_size="100GB")
    largest = max(p.numel() for p in model.parameters()) * 4 / 2**20
    return sum(p.numel() for p in model.parameters()), largest


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        count, largest = build_checkpoint(directory, args.layers, args.hidden, args.intermediate,
                                          args.vocab)
        size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
        print(f"checkpoint: {count / 1e6:.1f}M params, {size / 2**20:.0f} MB on disk, largest "
              f"tensor {largest:.0f} MB")
        rows = []
        for devices in args.devices:
            for mode in ("streamed", "load-all"):
                env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                           JAX_PLATFORMS="cpu")
                out = subprocess.run([sys.executable, "-c", CHILD, mode, directory], env=env,
                                     capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| loader | CPU devices (fsdp) | params MB | peak RSS - base MB | transient MB | s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['devices']} | {r['params_mb']} | "
              f"{r['peak_rss_mb'] - r['base_rss_mb']} | {r['transient_mb']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
