"""eval.py's modes on a tiny trained run, and the same numbers through an exported checkpoint."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import write_jsonl
from tests.train.test_loop import small_config

from hafrm_jax.data.readers import DataError
from hafrm_jax.data.synthetic import generate_pairs
from hafrm_jax.evaluation_cli import (detect_format, evaluate_pair_sets, pair_sets_from_config,
                                      read_rows, run_best_of_n, run_rewardbench)
from hafrm_jax.hf.export import export_checkpoint
from hafrm_jax.scorer import load_scorer
from hafrm_jax.train.loop import train_and_evaluate


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "run"
    train_and_evaluate(small_config(steps=6, eval_every=3), str(path))
    return str(path)


@pytest.fixture(scope="module")
def scorer(workdir):
    return load_scorer(workdir)


def test_pairs_on_the_runs_test_split_match_training(workdir, scorer):
    results = evaluate_pair_sets(scorer, pair_sets_from_config(scorer), bootstrap=200)
    test = results["test"]
    saved = json.load(open(f"{workdir}/results.json"))["test"]
    assert test["num_pairs"] == saved["num_pairs"] == 64
    assert test["accuracy"] == pytest.approx(saved["accuracy"])
    assert test["implicit_accuracy"] == pytest.approx(saved["implicit_accuracy"])
    low, high = test["accuracy_ci95"]
    assert low <= test["accuracy"] <= high
    for key in ("reward_margin", "reward_ties", "reward_ece", "implicit_ece"):
        assert key in test and f"{key}_ci95" in test


def test_undecodable_or_incomplete_rows_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": \n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: invalid JSON"):
        read_rows(str(path), required=("prompt", "response"))
    with pytest.raises(DataError, match=r"rows.jsonl:1: field 'chosen': missing"):
        read_rows(str(path), required=("prompt", "chosen"))
    path.write_text('["a", "b"]\n')
    with pytest.raises(DataError, match=r"rows.jsonl:1: expected a JSON object, got list"):
        read_rows(str(path))
    path.write_text("not json\n")
    with pytest.raises(DataError, match=r"rows.jsonl:1: invalid JSON"):
        detect_format(str(path))
    path.write_text('{"question": "a"}\n')
    with pytest.raises(DataError, match="cannot tell the format.*--format"):
        detect_format(str(path))


def test_input_file_with_detected_format(tmp_path, scorer):
    pairs = generate_pairs(20, seed=5)
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert detect_format(path) == "generic"
    results = evaluate_pair_sets(scorer, {"pairs.jsonl": (path, "generic")}, bootstrap=0)
    assert results["pairs.jsonl"]["num_pairs"] == 20


def test_score_responses_in_input_order(scorer):
    pairs = generate_pairs(6, seed=1)
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    rewards = scorer.score_responses(prompts, responses)
    scores, _ = scorer.score_pairs(pairs)
    np.testing.assert_allclose(rewards[:6], scores["rewards"][:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rewards[6:], scores["rewards"][:, 1], rtol=1e-5, atol=1e-6)


def test_best_of_n_and_rewardbench(tmp_path, scorer):
    pairs = generate_pairs(4, seed=2)
    rows = [{"prompt": p.prompt, "responses": [p.rejected, p.chosen], "gold_scores": [0, 1]}
            for p in pairs]
    out, summary = run_best_of_n(scorer, write_jsonl(tmp_path / "bon.jsonl", rows))
    assert len(out) == 4 and all(len(r["scores"]) == 2 and r["best"] in (0, 1) for r in out)
    assert summary["gold_of_random_pick"] == 0.5 and summary["gold_of_oracle"] == 1.0
    rb = [{"prompt": p.prompt[0]["content"], "chosen": p.chosen, "rejected": p.rejected,
           "subset": subset} for p, subset in zip(generate_pairs(8, seed=3),
                                                   ["alpacaeval-easy", "hep-go"] * 4)]
    result = run_rewardbench(scorer, write_jsonl(tmp_path / "rb.jsonl", rb))
    assert set(result["sections"]) == {"Chat", "Reasoning"}
    assert result["subsets"]["hep-go"]["num_pairs"] == 4


def test_exported_checkpoint_scores_the_same(tmp_path, scorer):
    out = export_checkpoint(scorer.params, scorer.model_config, scorer.tokenizer,
                            str(tmp_path / "rm"))
    hf = load_scorer(out, max_length=scorer.max_length,
                     max_prompt_length=scorer.max_prompt_length)
    pairs = generate_pairs(10, seed=4)
    ours, _ = scorer.score_pairs(pairs)
    theirs, _ = hf.score_pairs(pairs)
    np.testing.assert_allclose(theirs["rewards"], ours["rewards"], rtol=1e-5, atol=1e-6)
    assert "logps" not in theirs  # no reference model given: no implicit reward


@pytest.mark.slow
def test_eval_cli(tmp_path, workdir):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "eval.py", f"--workdir={workdir}",
                          f"--output={tmp_path / 'm.json'}", "--bootstrap=100",
                          f"--plot={tmp_path / 'margins.png'}"], cwd=root, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| test | 64 |" in out.stdout
    assert json.loads((tmp_path / "m.json").read_text())["test"]["num_pairs"] == 64
    assert (tmp_path / "margins.png").stat().st_size > 1000
    bad = tmp_path / "responses.jsonl"  # --mode=score needs a response on every line
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "answer": "b"}\n')
    out = subprocess.run([sys.executable, "eval.py", f"--workdir={workdir}", "--mode=score",
                          f"--input={bad}"], cwd=root, capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"eval.py: error: {bad}:2: field 'response': missing")


def test_out_of_distribution_sets_from_the_config(tmp_path, scorer):
    import copy

    import ml_collections

    pairs = generate_pairs(12, seed=9)
    path = write_jsonl(tmp_path / "ood.jsonl", [
        {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    scorer = copy.copy(scorer)
    scorer.config = copy.deepcopy(scorer.config)
    scorer.config.eval.datasets = ml_collections.ConfigDict(
        {"ood": {"source": "generic", "files": path}})
    sets = pair_sets_from_config(scorer)
    assert set(sets) == {"test", "ood"} and len(sets["ood"]) == 12
    assert set(pair_sets_from_config(scorer, ["ood"])) == {"ood"}  # eval.py --sets=ood
    with pytest.raises(ValueError, match="no pair set \\['odd'\\]: this config has test, ood"):
        pair_sets_from_config(scorer, ["odd"])
    # a set that cannot be read (here: moved; offline, a hub set) is named, with the way to
    # score the others
    scorer.config.eval.datasets.ood.files = str(tmp_path / "moved.jsonl")
    with pytest.raises(ValueError, match="eval.datasets.ood could not be read .*--sets=test$"):
        pair_sets_from_config(scorer)
    # a run trained from local files reads a hub (or TFDS) set as that source alone
    from hafrm_jax.evaluation_cli import _dataset_data_config

    data = copy.deepcopy(scorer.config.data)
    data.files.train, data.files.validation, data.files.test = "t.jsonl", "v.jsonl", "s.jsonl"
    hub = _dataset_data_config(data, {"source": "hh_rlhf", "hub_path": "Anthropic/hh-rlhf"})
    assert (hub.files.train, hub.files.validation, hub.files.test) == ("", "", "")
    assert hub.hub.path == "Anthropic/hh-rlhf"


def test_plain_text_prompts_are_scored_through_the_runs_template(tmp_path, workdir, scorer):
    """A run trained with data.prompt_template is scored with it, as training tokenised."""
    import shutil

    from hafrm_jax.data.records import PreferencePair

    template = "Q: {prompt} A:"
    copy = tmp_path / "templated"
    shutil.copytree(workdir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["data"]["prompt_template"] = template
    (copy / "config.json").write_text(json.dumps(config))
    summary = json.loads((copy / "data.json").read_text())
    (copy / "data.json").write_text(json.dumps({**summary, "prompt_format": "text"}))
    loaded = load_scorer(str(copy))
    assert (loaded.prompt_template, loaded.prompt_format) == (template, "text")

    text = [PreferencePair(p.prompt[0]["content"], p.chosen, p.rejected)
            for p in generate_pairs(6, seed=4)]
    formatted = [dataclasses.replace(p, prompt=template.format(prompt=p.prompt)) for p in text]
    as_text = dataclasses.replace(scorer, prompt_format="text")
    templated = dataclasses.replace(as_text, prompt_template=template)
    np.testing.assert_array_equal(templated.score_pairs(text)[0]["rewards"],
                                  as_text.score_pairs(formatted)[0]["rewards"])
    assert not np.array_equal(templated.score_pairs(text)[0]["rewards"],
                              as_text.score_pairs(text)[0]["rewards"])


def test_a_run_trained_on_chat_turns_scores_a_text_prompt_as_the_users_turn(tmp_path, workdir,
                                                                           scorer):
    """score / BoN / RewardBench rows give prompts as text: a run trained on chat turns (every
    built-in recipe) reads one as the user's turn, as in training, not as raw text."""
    assert json.loads(open(f"{workdir}/data.json").read())["prompt_format"] == "turns"
    assert scorer.prompt_format == "turns"
    pairs = generate_pairs(6, seed=5)
    text = [p.prompt[0]["content"] for p in pairs]
    np.testing.assert_array_equal(
        scorer.score_responses(text, [p.chosen for p in pairs]),
        scorer.score_responses([p.prompt for p in pairs], [p.chosen for p in pairs]))
    raw = dataclasses.replace(scorer, prompt_format="text")
    assert not np.array_equal(raw.score_responses(text, [p.chosen for p in pairs]),
                              scorer.score_responses(text, [p.chosen for p in pairs]))
    # an exported chat model (its tokenizer has a chat template) reads prompts the same way
    out = export_checkpoint(scorer.params, scorer.model_config, scorer.tokenizer,
                            str(tmp_path / "rm"))
    assert load_scorer(out).prompt_format == "turns"


def test_a_dpo_run_is_scored_and_exported_by_its_implicit_reward(tmp_path):
    """A DPO run's reward head is never trained: eval.py's accuracy, score / BoN rewards are
    its implicit reward, and export.py will not write the untrained head as a reward model."""
    workdir = str(tmp_path / "dpo")
    train_and_evaluate(small_config(method="dpo", steps=4, eval_every=4), workdir)
    scorer = load_scorer(workdir)
    assert scorer.scored_by == "implicit"
    test = evaluate_pair_sets(scorer, pair_sets_from_config(scorer), bootstrap=0)["test"]
    saved = json.load(open(f"{workdir}/results.json"))["test"]
    assert test["accuracy"] == test["implicit_accuracy"] == pytest.approx(saved["accuracy"])
    pairs = generate_pairs(5, seed=6)
    scores, _ = scorer.score_pairs(pairs)
    implicit = scorer.beta * (scores["logps"] - scores["ref_logps"])
    rewards = scorer.score_responses([p.prompt for p in pairs], [p.rejected for p in pairs])
    np.testing.assert_allclose(rewards, implicit[:, 1], rtol=1e-5, atol=1e-7)
    assert np.ptp(rewards) > 0  # not the untrained head's constant
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "export.py", f"--workdir={workdir}",
                          f"--out={tmp_path / 'rm'}"], cwd=root, capture_output=True, text=True)
    assert out.returncode != 0 and "is a DPO run" in out.stderr
    assert not (tmp_path / "rm").exists()
    # the route export.py names: the policy, scored against its starting model by its
    # implicit reward, as the workdir is (it has no reward head to score by)
    policy = export_checkpoint(scorer.params, scorer.model_config, scorer.tokenizer,
                               str(tmp_path / "policy"), head="policy")
    start = export_checkpoint(scorer.ref_params, scorer.model_config, scorer.tokenizer,
                              str(tmp_path / "start"), head="policy")
    exported = load_scorer(policy, reference=start, beta=scorer.beta,
                           max_length=scorer.max_length,
                           max_prompt_length=scorer.max_prompt_length)
    assert exported.scored_by == "implicit"
    np.testing.assert_allclose(exported.score_responses([p.prompt for p in pairs],
                                                        [p.rejected for p in pairs]),
                               rewards, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="has no reward head .* --reference=START"):
        load_scorer(policy).score_responses([pairs[0].prompt], [pairs[0].chosen])


def test_a_reward_model_export_has_no_implicit_reward_to_compare(tmp_path, scorer):
    """Its LM head is not in the export: the reference comparison would read the input
    embedding in its place, so it is refused."""
    assert not scorer.model_config.tie_embeddings
    out = export_checkpoint(scorer.params, scorer.model_config, scorer.tokenizer,
                            str(tmp_path / "rm"))
    with pytest.raises(ValueError, match="has no LM head .*--head=policy"):
        load_scorer(out, reference=out)

