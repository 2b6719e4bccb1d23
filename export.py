"""Export a trained reward model as a Hugging Face checkpoint.

  python export.py --workdir=runs/hh --out=exported/hh-rm            # ForSequenceClassification
  python export.py --workdir=runs/hh --out=exported/hh-policy --head=policy   # ForCausalLM

The reward model loads unchanged in transformers (AutoModelForSequenceClassification), trl,
OpenRLHF and vLLM; `score` is the reward head. A LoRA run exports merged weights, or with
--peft its adapters in PEFT's layout. Only safetensors are written.
"""

import dataclasses
import logging

from absl import app, flags

from hafrm_jax import cli
from hafrm_jax.hf.export import DTYPES, export_checkpoint, export_peft_adapters
from hafrm_jax.workdir import load_run

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to export.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (must not exist).", required=True)
_HEAD = flags.DEFINE_enum("head", "reward", ["reward", "policy"],
                          "reward: <Family>ForSequenceClassification; policy: <Family>ForCausalLM.")
_PARAMS = flags.DEFINE_enum("params", "best", ["best", "latest"],
                            "best: the best validation accuracy; latest: the last checkpoint.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", sorted(DTYPES), "Weight dtype in the export.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
_PEFT = flags.DEFINE_bool("peft", False, "LoRA runs: write the adapters (and the reward head as "
                          "`score`) in PEFT's layout instead of merged weights.")


def main(argv):
    del argv
    if _PEFT.value and _HEAD.value == "policy":
        raise app.UsageError("--peft writes the reward model's adapters (PEFT's SEQ_CLS task, "
                             "the reward head as `score`); export the policy as merged weights: "
                             "--head=policy without --peft")
    run = load_run(_WORKDIR.value, _PARAMS.value)
    if run.config.train.method == "dpo" and (_HEAD.value == "reward" or _PEFT.value):
        # Its reward head was never trained: a ForSequenceClassification export (or PEFT's
        # `score`) would give every response the same reward.
        raise app.UsageError(
            f"{_WORKDIR.value} is a DPO run: its reward is the implicit beta * (logp - ref_logp) "
            "of its policy, not the reward head (untrained). Export the policy with "
            "--head=policy and score it against its starting model (eval.py --checkpoint=OUT "
            f"--reference=START --beta={run.config.train.beta}).")
    if _PEFT.value:
        if run.lora is None:
            raise app.UsageError(f"{_WORKDIR.value} is not a LoRA run: --peft has no adapters")
        if not run.config.model.name_or_path:
            raise app.UsageError(
                f"{_WORKDIR.value} trained its adapters on a random initialisation, which no "
                "checkpoint holds: PEFT would have no base to load them onto. Export merged "
                "weights (without --peft).")
        if run.config.model.lora.base_dtype:
            logging.warning(
                "%s trained on its base rounded to %s; PEFT loads the adapters onto the base "
                "checkpoint as stored, so rewards can differ slightly from training's (load the "
                "base in %s, or export merged weights, which reproduce them)", _WORKDIR.value,
                run.config.model.lora.base_dtype, run.config.model.lora.base_dtype)
        out = export_peft_adapters(
            run.adapters, dataclasses.replace(run.model_config, lora=run.lora), run.tokenizer,
            _OUT.value, base_name_or_path=run.config.model.name_or_path,
            overwrite=_OVERWRITE.value)
        print(f"exported the LoRA adapters of step {run.step} of {_WORKDIR.value} to {out}")
        return
    out = export_checkpoint(run.params, run.model_config, run.tokenizer, _OUT.value,
                            head=_HEAD.value, base_config=run.hf_config, dtype=_DTYPE.value,
                            overwrite=_OVERWRITE.value)
    print(f"exported step {run.step} of {_WORKDIR.value} ({_HEAD.value} head, {_DTYPE.value}) "
          f"to {out}")


if __name__ == "__main__":
    cli.run(main)
