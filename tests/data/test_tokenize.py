"""Tokenisation: truncation sides, EOS, masks, identical pairs; and the synthetic task."""

import numpy as np
import pytest

from hafrm_jax.data import synthetic, tokenize
from hafrm_jax.data.batching import EpochSampler, eval_batches, flip_labels, make_batch
from hafrm_jax.data.records import PreferencePair
from hafrm_jax.data.tokenize import tokenize_pairs, tokenize_responses


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic.build_tokenizer()


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_layout_eos_and_masks(tokenizer):
    pair = PreferencePair([{"role": "user", "content": "please repeat these words : cat dog"}],
                          "cat dog", "cat")
    data, stats = tokenize_pairs([pair], tokenizer, max_length=16, max_prompt_length=12)
    prompt = ids(tokenizer, "user : please repeat these words : cat dog assistant :")
    eos = tokenizer.eos_token_id
    assert data.prompt_lengths[0] == len(prompt)
    chosen = list(data.tokens[0, 0, :data.lengths[0, 0]])
    rejected = list(data.tokens[0, 1, :data.lengths[0, 1]])
    assert chosen == prompt + ids(tokenizer, "cat dog") + [eos]
    assert rejected == prompt + ids(tokenizer, "cat") + [eos]
    batch = make_batch(data, np.array([0]), pad_to_multiple=8)
    assert batch["input_ids"].shape == (1, 2, 16)
    # response mask: exactly the response tokens and EOS; attention: every real token
    np.testing.assert_array_equal(batch["response_mask"][0, 0].sum(), 3)
    np.testing.assert_array_equal(batch["response_mask"][0, 1].sum(), 2)
    assert batch["attention_mask"][0, 0].sum() == len(chosen)
    assert stats.pairs_out == 1 and stats.identical_dropped == 0


def test_truncation_prompt_left_response_right(tokenizer):
    words = "one two three four five six seven eight nine ten"
    pair = PreferencePair(f"repeat : {words}", words, "ten")
    data, stats = tokenize_pairs([pair], tokenizer, max_length=10, max_prompt_length=4)
    assert data.prompt_lengths[0] == 4
    # the prompt keeps its END (left truncation)
    assert list(data.tokens[0, 0, :4]) == ids(tokenizer, "seven eight nine ten")
    # the response keeps its START (right truncation), then EOS
    assert list(data.tokens[0, 0, 4:10]) == ids(tokenizer, "one two three four five") + [
        tokenizer.eos_token_id]
    assert stats.prompts_truncated == 1 and stats.responses_truncated == 1


def _tokenizer_with_bos(adds_it: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "<pad> <eos> <unk> <s> a b c d e f g h".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_it:  # as Llama's, Mistral's and Gemma's tokenizers do
        backend.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                               special_tokens=[("<s>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                   eos_token="<eos>", unk_token="<unk>", bos_token="<s>")


def test_a_prompt_cut_from_the_left_keeps_its_bos():
    """Llama, Mistral and Gemma start every sequence with BOS: the left cut keeps it first."""
    tok = _tokenizer_with_bos(adds_it=True)
    data, stats = tokenize_pairs([PreferencePair("a b c d e f", "g", "h")], tok, max_length=6,
                                 max_prompt_length=4)
    assert tok.convert_ids_to_tokens(data.tokens[0, 0, :data.lengths[0, 0]].tolist()) == [
        "<s>", "d", "e", "f", "g", "<eos>"]
    assert data.prompt_lengths[0] == 4 and stats.prompts_truncated == 1


def test_a_bos_token_the_tokenizer_never_adds_is_not_put_first():
    """SmolLM2's bos_token is its chat-turn opener, which its tokenizer does not add: a
    sequence gets no stray one in front, and a left cut keeps none."""
    tok = _tokenizer_with_bos(adds_it=False)
    data, _ = tokenize_pairs([PreferencePair("a b", "g", "h"),
                              PreferencePair("a b c d e f", "g", "h")], tok, max_length=6,
                             max_prompt_length=4)
    assert tok.convert_ids_to_tokens(data.tokens[0, 0, :data.lengths[0, 0]].tolist()) == [
        "a", "b", "g", "<eos>"]
    assert tok.convert_ids_to_tokens(data.tokens[1, 0, :data.lengths[1, 0]].tolist()) == [
        "c", "d", "e", "f", "g", "<eos>"]
    scored = tokenize_responses(["a b"], ["g"], tok, max_length=6, max_prompt_length=4)
    assert tok.convert_ids_to_tokens(scored.tokens[0, 0, :scored.lengths[0, 0]].tolist()) == [
        "a", "b", "g", "<eos>"]


def test_identical_after_truncation_are_dropped_and_counted(tokenizer):
    pairs = [PreferencePair("cat", "one two three four", "one two three five"),
             PreferencePair("cat", "dog", "owl")]
    data, stats = tokenize_pairs(pairs, tokenizer, max_length=4, max_prompt_length=1)
    assert len(data) == 1 and stats.identical_dropped == 1 and stats.pairs_in == 2


@pytest.mark.parametrize("chat_format", ["auto", "hh"])
def test_encoding_a_chunk_a_call_gives_what_one_call_a_text_gives(monkeypatch, chat_format):
    """Texts are encoded ENCODE_CHUNK items a tokenizer call (the tokenizer's threads): chunk
    boundaries, chat turns and plain text, BOS, cuts and dropped pairs change nothing."""
    tok = _tokenizer_with_bos(adds_it=True)
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}h {% endif %}")
    words = "a b c d e f g h".split()
    rng = np.random.default_rng(0)
    pairs = [PreferencePair([{"role": "user", "content": " ".join(rng.choice(words, n))}]
                            if n % 2 else " ".join(rng.choice(words, n)),
                            " ".join(rng.choice(words, 1 + n % 4)), " ".join(rng.choice(words, 2)))
             for n in rng.integers(1, 9, size=23)]
    pairs.append(PreferencePair("a", "b c d e f g", "b c d e f h"))  # identical once cut

    def tokenized():
        data, stats = tokenize_pairs(pairs, tok, 8, 5, chat_format, indices=np.arange(24) + 7)
        scored = tokenize_responses([p.prompt for p in pairs], [p.chosen for p in pairs], tok,
                                    8, 5, chat_format)
        return [data.tokens, data.lengths, data.prompt_lengths, data.index, scored.tokens,
                scored.lengths, scored.prompt_lengths], stats

    monkeypatch.setattr(tokenize, "ENCODE_CHUNK", 1)  # one tokenizer call a text
    one_a_call, stats = tokenized()
    assert stats.identical_dropped == 1 and stats.prompts_truncated > 0
    for chunk in (5, 1024):
        monkeypatch.setattr(tokenize, "ENCODE_CHUNK", chunk)
        arrays, chunked_stats = tokenized()
        assert chunked_stats == stats
        for got, want in zip(arrays, one_a_call):
            np.testing.assert_array_equal(got, want)


def test_prompt_must_leave_room(tokenizer):
    with pytest.raises(ValueError, match="max_prompt_length"):
        tokenize_pairs([], tokenizer, max_length=8, max_prompt_length=8)


def test_synthetic_splits_disjoint_and_answer_known():
    splits = synthetic.generate_splits(300, 50, 50, seed=3)
    prompts = {name: {p.prompt[0]["content"] for p in split} for name, split in splits.items()}
    assert not prompts["train"] & prompts["test"]
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["validation"] & prompts["test"]
    for pair in splits["train"]:
        text = pair.prompt[0]["content"]
        words = text.split(" : ")[1].split()
        answer = words if "repeat" in text else words[::-1]
        assert pair.chosen == " ".join(answer) and pair.rejected != pair.chosen
    assert synthetic.generate_splits(300, 50, 50, seed=3) == splits  # deterministic


def test_sampler_is_a_pure_function_of_step():
    sampler = EpochSampler(num_pairs=10, batch_size=3, seed=0)
    assert sampler.batches_per_epoch == 3
    epoch0 = np.concatenate([sampler.indices(s) for s in range(3)])
    assert len(set(epoch0)) == 9  # no pair twice in an epoch
    assert not np.array_equal(sampler.indices(0), sampler.indices(3))  # reshuffled per epoch
    np.testing.assert_array_equal(sampler.indices(4), EpochSampler(10, 3, 0).indices(4))
    assert sampler.position(4) == {"epoch": 1, "batch_in_epoch": 1}


def test_eval_batches_cover_every_pair_once(tokenizer):
    pairs = synthetic.generate_pairs(7, seed=0)
    data, _ = tokenize_pairs(pairs, tokenizer, 32, 20)
    for by_length in (True, False):
        seen = []
        batches = list(eval_batches(data, 3, 16, num_batches=4, by_length=by_length))
        assert len(batches) == 4  # 3 batches of pairs, then one of filler for an uneven share
        for batch in batches:
            assert batch["input_ids"].shape[0] == 3
            seen.extend(batch["index"][batch["valid"] == 1].tolist())
        assert sorted(seen) == list(range(7))
        assert (seen == list(range(7))) is not by_length  # split order only when asked


def test_eval_batches_take_pairs_of_similar_length_together(tokenizer):
    """Shortest first: each batch pads to about its own pairs, so a split of mixed lengths
    computes fewer positions than in split order; filler rows copy the shortest pair."""
    words = ["cat", "dog", "red", "blue", "one", "two"]
    rng = np.random.default_rng(0)
    pairs = [PreferencePair(" ".join(rng.choice(words, rng.integers(1, 30))), "cat dog", "red")
             for _ in range(40)]
    data, _ = tokenize_pairs(pairs, tokenizer, 40, 32)
    longest = data.lengths.max(axis=1)
    by_length = list(eval_batches(data, 6, 4))
    split_order = list(eval_batches(data, 6, 4, by_length=False))
    seqs = [b["input_ids"].shape[-1] for b in by_length]
    assert seqs == sorted(seqs)
    assert sum(b["input_ids"].size for b in by_length) < \
        0.8 * sum(b["input_ids"].size for b in split_order)
    last = by_length[-1]  # 40 = 6 x 6 + 4: two filler rows
    filler = last["valid"] == 0
    assert filler.sum() == 2 and (last["index"][filler] == np.argmin(longest)).all()
    for batch in by_length:  # each batch's masks are its own pairs'
        rows = batch["index"]
        np.testing.assert_array_equal(batch["attention_mask"].sum(-1), data.lengths[rows])


def test_label_noise_flips_the_requested_share(tokenizer):
    data, _ = tokenize_pairs(synthetic.generate_pairs(100, seed=0), tokenizer, 32, 20)
    noisy, flipped = flip_labels(data, 0.25, seed=0)
    assert len(flipped) == 25
    np.testing.assert_array_equal(noisy.tokens[flipped, 0], data.tokens[flipped, 1])
    np.testing.assert_array_equal(noisy.lengths[flipped], data.lengths[flipped][:, ::-1])
    kept = np.setdiff1d(np.arange(100), flipped)
    np.testing.assert_array_equal(noisy.tokens[kept], data.tokens[kept])
    np.testing.assert_array_equal(flip_labels(data, 0.25, seed=0)[1], flipped)
    # a host holding every other pair flips exactly its part of the same set
    pairs = synthetic.generate_pairs(100, seed=0)
    share = np.arange(1, 100, 2)
    half, _ = tokenize_pairs([pairs[i] for i in share], tokenizer, 32, 20, indices=share)
    noisy_half, same = flip_labels(half, 0.25, seed=0, total=100)
    np.testing.assert_array_equal(same, flipped)
    np.testing.assert_array_equal(noisy_half.tokens, noisy.tokens[share])


def test_length_bucketing_keeps_epochs_exact_and_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=400)
    plain = EpochSampler(400, 8, seed=1)
    bucketed = EpochSampler(400, 8, seed=1, lengths=lengths, bucket_batches=10)
    epoch = np.concatenate([bucketed.indices(s) for s in range(50)])
    assert sorted(epoch) == list(range(400))  # every pair once per epoch
    spread = lambda s: np.mean([np.ptp(lengths[s.indices(i)]) for i in range(50)])
    assert spread(bucketed) < spread(plain) / 3  # similar lengths share a batch
    np.testing.assert_array_equal(bucketed.indices(57), EpochSampler(
        400, 8, seed=1, lengths=lengths, bucket_batches=10).indices(57))  # pure in (seed, step)
    assert not np.array_equal(bucketed.indices(0), bucketed.indices(50))
