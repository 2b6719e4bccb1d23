"""The PyTorch + transformers step that hafrm-jax's speed is compared against.

transformers' model of the same preset shape (random weights), bf16 autocast on CUDA, fused
AdamW; mode "haf": reward head on the last token + LM-head log-probs of the response tokens +
the DPO term against precomputed reference log-probs, on one backbone; mode "rm": the plain
reward model (`*ForSequenceClassification`). Optionally under torch.compile. Used by
bench/train_step.py --compare-torch so that both stacks are timed in one call on one device.
"""

from __future__ import annotations

import time

from hafrm_jax.hf.config import hf_config_dict
from hafrm_jax.model.config import PRESETS


def run(shape: str, mode: str, pairs: int, seq: int, steps: int, compile_: bool) -> dict:
    import torch
    import torch.nn.functional as F
    import transformers

    from bench.train_step import step_flops

    cfg = PRESETS[shape]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fields = hf_config_dict(cfg)
    config = transformers.AutoConfig.for_model(**fields, attn_implementation="sdpa",
                                               num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    if mode == "rm":
        model = transformers.AutoModelForSequenceClassification.from_config(config).to(device)
        params = list(model.parameters())
    else:
        model = transformers.AutoModelForCausalLM.from_config(config).to(device)
        head = torch.nn.Linear(cfg.hidden_size, 1, bias=False).to(device)
        params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda")
    batch = 2 * pairs
    ids = torch.randint(1, cfg.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    response = torch.zeros(batch, seq, device=device)
    response[:, seq // 2:] = 1.0
    ref = torch.randn(batch, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with autocast:
            if mode == "rm":
                r = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).float()
                loss = -F.logsigmoid(r[:pairs] - r[pairs:]).mean()
            else:
                h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
                r = head(h[:, -1]).squeeze(-1).float()
                logits = model.lm_head(h[:, :-1]).float()
                lp = torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None]).squeeze(-1)
                policy = (lp * response[:, 1:]).sum(-1) - ref
                dpo = -F.logsigmoid(0.1 * (policy[:pairs] - policy[pairs:])).mean()
                loss = -F.logsigmoid(r[:pairs] - r[pairs:]).mean() + 0.2 * dpo
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    fn = torch.compile(step) if compile_ else step
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    start = time.time()
    for _ in range(3):
        fn()
    sync()
    warmup = time.time() - start
    start = time.perf_counter()
    for _ in range(steps):
        loss = fn()
    sync()
    step_s = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    out = dict(stack="torch", method="baseline" if mode == "rm" else "haf", compile=compile_,
               pairs=pairs, seq=seq, step_s=round(step_s, 4),
               tokens_per_s=round(batch * seq / step_s),
               tflops=round(step_flops(cfg, pairs, seq, mode != "rm") / step_s / 1e12, 2),
               warmup_s=round(warmup, 1), peak_mem_gb=peak, loss=float(loss))
    model = opt = None  # the closure above holds them: free their memory before the next case
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out
