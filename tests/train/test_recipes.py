"""The paper's recipes run end to end on local files with a pretrained-style checkpoint."""

import json

import pytest

from tests.helpers import HH_FILE, bpe_tokenizer, hh_records, tiny_checkpoint

from hafrm_jax.train.loop import train_and_evaluate


@pytest.mark.slow
@pytest.mark.skipif(not HH_FILE.exists(), reason=f"the HH-RLHF sample is absent at {HH_FILE}")
def test_hh_recipe_on_local_files(tmp_path):
    from configs import hh

    records = hh_records()
    for name, part in (("train", records[:1500]), ("test", records[1500:])):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    tokenizer = bpe_tokenizer(r["chosen"] for r in records)
    checkpoint = tiny_checkpoint(str(tmp_path / "model"), tokenizer)

    config = hh.get_config()
    config.model.name_or_path = checkpoint
    config.model.dtype, config.model.remat = "float32", "none"
    config.data.hub.path = ""
    config.data.files.train = str(tmp_path / "train.jsonl")
    config.data.files.test = str(tmp_path / "test.jsonl")
    config.data.max_train_pairs = 64
    config.data.max_length, config.data.max_prompt_length = 128, 64
    config.train.steps, config.train.batch_size, config.train.eval_every = 2, 2, 2
    result = train_and_evaluate(config, str(tmp_path / "run"))
    assert result.completed
    assert result.test["num_pairs"] == 299  # 300 test records less the one bad one among them
    assert 0.0 <= result.test["accuracy"] <= 1.0
    saved = json.loads((tmp_path / "run" / "hf_config.json").read_text())
    assert saved["model_type"] == "llama"
