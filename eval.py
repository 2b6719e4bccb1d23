"""Evaluate a reward model: preference accuracy, scoring, Best-of-N and RewardBench.

  python eval.py --workdir=runs/hh                          # the run's test split (+ eval.datasets)
  python eval.py --workdir=runs/hh --config=configs/hh_harmless.py   # another recipe's test sets
  python eval.py --checkpoint=exported/rm --input=pairs.jsonl --output=metrics.json
  python eval.py --mode=score --checkpoint=DIR --input=IN.jsonl --output=OUT.jsonl
  python eval.py --mode=bon --checkpoint=DIR --input=candidates.jsonl --output=picks.jsonl
  python eval.py --mode=rewardbench --checkpoint=DIR --input=reward-bench-filtered.parquet

--checkpoint takes a training workdir or a Hugging Face checkpoint directory (any supported
family, including `*ForSequenceClassification` reward models from elsewhere).
"""

import json
import os

import numpy as np
from absl import app, flags

from hafrm_jax import cli
from hafrm_jax.evaluation_cli import (detect_format, evaluate_pair_sets, markdown_table,
                                      pair_sets_from_config, read_rows, run_best_of_n,
                                      run_rewardbench, write_jsonl)
from hafrm_jax.scorer import load_scorer

_CONFIG = cli.define_config_file(
    "config", None, "A recipe whose test split and eval.datasets to evaluate on (default: the "
    "workdir's own config).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir to evaluate.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A training workdir or HF checkpoint dir.")
_PARAMS = flags.DEFINE_enum("params", "best", ["best", "latest"], "Which params of a workdir.")
_REFERENCE = flags.DEFINE_string("reference", None, "For a HF checkpoint: its starting model's "
                                 "directory, to report the implicit (DPO) reward too.")
_BETA = flags.DEFINE_float("beta", None, "DPO's beta for implicit rewards beta * (logp - "
                           "ref_logp) (default: the run's, or 0.1 for a HF checkpoint).")
_MODE = flags.DEFINE_enum("mode", "pairs", ["pairs", "score", "bon", "rewardbench"],
                          "What to evaluate.")
_INPUT = flags.DEFINE_string("input", None, "A local file to evaluate instead of the config's "
                             "datasets (pairs), or the mode's input (score, bon, rewardbench).")
_FORMAT = flags.DEFINE_string("format", "auto", "Format of --input for --mode=pairs: auto, "
                              "hh_rlhf, beaver, alpaca_farm, chatbot_arena or generic.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the results (JSON or JSONL).")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the 95% CIs.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Pairs (or sequences) per device batch.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", None, "Tokens per sequence (default: the "
                                   "run's, or 2048 for a HF checkpoint).")
_MAX_PROMPT = flags.DEFINE_integer("max_prompt_length", None, "Prompt tokens (default: the "
                                   "run's, or 1024).")
_SETS = flags.DEFINE_list("sets", None, "--mode=pairs without --input: which of the config's "
                          "pair sets to score, e.g. test (the run's test split) or test,helpful "
                          "(eval.datasets names); default: all of them.")
_PLOT = flags.DEFINE_string("plot", None, "--mode=pairs: write a PNG histogram of the reward "
                            "margins (chosen - rejected) per dataset to this path.")


def main(argv):
    del argv
    path = _CHECKPOINT.value or _WORKDIR.value
    if not path:
        raise app.UsageError("give --workdir or --checkpoint")
    if not _CHECKPOINT.value and not os.path.exists(os.path.join(path, "model_config.json")):
        raise app.UsageError(f"--workdir={path} is not a training workdir (no "
                             "model_config.json there); a Hugging Face checkpoint goes in "
                             "--checkpoint")
    scorer = load_scorer(path, which=_PARAMS.value, reference=_REFERENCE.value,
                         batch_size=_BATCH.value, max_length=_MAX_LENGTH.value,
                         max_prompt_length=_MAX_PROMPT.value, beta=_BETA.value)
    mode = _MODE.value
    if mode != "pairs" and not _INPUT.value:
        raise app.UsageError(f"--mode={mode} needs --input")

    if mode == "score":
        rows = read_rows(_INPUT.value, required=("prompt", "response"))
        rewards = scorer.score_responses([r["prompt"] for r in rows], [r["response"] for r in rows])
        out = _OUTPUT.value or os.path.splitext(_INPUT.value)[0] + ".scored.jsonl"
        write_jsonl(out, [dict(r, reward=float(x)) for r, x in zip(rows, rewards)])
        print(f"scored {len(rows)} responses -> {out} (mean reward {np.mean(rewards):.4f})")
        return
    if mode == "bon":
        rows, summary = run_best_of_n(scorer, _INPUT.value)
        out = _OUTPUT.value or os.path.splitext(_INPUT.value)[0] + ".bon.jsonl"
        write_jsonl(out, rows)
        print(json.dumps({k: v for k, v in summary.items() if k != "picks"}, indent=2))
        print(f"picks -> {out}")
        return
    if mode == "rewardbench":
        result = run_rewardbench(scorer, _INPUT.value)
        print(markdown_table({name: {"score": score} for name, score in
                              list(result["sections"].items()) + [("RewardBench", result["score"])]},
                             ["score"]))
        _write_json(result)
        return

    if _INPUT.value:
        fmt = detect_format(_INPUT.value) if _FORMAT.value == "auto" else _FORMAT.value
        sets = {os.path.basename(_INPUT.value): (_INPUT.value, fmt)}
    else:
        if _CONFIG.value is not None:
            scorer.config = _CONFIG.value
        sets = pair_sets_from_config(scorer, _SETS.value)
    results = evaluate_pair_sets(scorer, sets, _BOOTSTRAP.value, _PLOT.value)
    scored_by = {"reward": "its reward head",
                 "implicit": "its implicit reward beta * (logp - ref_logp) (a DPO run)"}
    print(f"model: {scorer.source}; accuracy by {scored_by[scorer.scored_by]}")
    print(markdown_table(results, ["num_pairs", "accuracy", "implicit_accuracy", "reward_margin",
                                   "reward_ties", "reward_ece"]))
    _write_json(results)


def _write_json(obj) -> None:
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
        print(f"results -> {_OUTPUT.value}")


if __name__ == "__main__":
    cli.run(main)
