"""The embedded default task: a preference dataset with a known right answer, and its tokenizer.

The user asks the assistant to repeat or reverse a list of words. The chosen response does it
exactly; the rejected response is a near miss of one of three kinds: a word swapped for one that
is not in the prompt, a word left out, or (for "reverse") the list repeated unreversed. A reward
model that reads the prompt can tell them apart every time, so held-out accuracy measures how
much of the rule it learned, and label noise (flipping training pairs) can be dialled in.

Everything is generated locally: a word-level tokenizer built with `tokenizers` and wrapped as a
transformers `PreTrainedTokenizerFast` with a chat template, so the rest of the pipeline treats
it exactly like a real model's tokenizer.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hafrm_jax.data.records import PreferencePair

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
TEMPLATE_WORDS = ("user", "assistant", ":", "please", "repeat", "reverse", "these", "words")
CONTENT_WORDS = tuple(
    "apple banana cherry grape lemon mango melon peach pear plum "
    "red blue green black white pink gray gold brown orange "
    "cat dog fox owl bee cow pig hen ant bat "
    "one two three four five six seven eight nine ten "
    "sun moon star rain snow wind fire ice rock sand".split()
)
INSTRUCTIONS = ("repeat", "reverse")
# A chat template in the same Jinja dialect as real tokenizers', on a word-level vocabulary.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : {{ message['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The task's word-level tokenizer (61 tokens), identical on every machine."""
    vocab = {tok: i for i, tok in enumerate((PAD, EOS, UNK) + TEMPLATE_WORDS + CONTENT_WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _near_miss(words: list[str], answer: list[str], instruction: str,
               rng: np.random.Generator) -> list[str]:
    """A wrong answer that differs from `answer` in one place."""
    kinds = ["substitute", "drop"] + (["unreversed"] if instruction == "reverse" else [])
    kind = kinds[rng.integers(len(kinds))]
    wrong = list(answer)
    if kind == "substitute":
        outside = [w for w in CONTENT_WORDS if w not in words]
        wrong[rng.integers(len(wrong))] = outside[rng.integers(len(outside))]
    elif kind == "drop":
        del wrong[rng.integers(len(wrong))]
    else:
        wrong = list(words)
    return wrong


def generate_pairs(num_pairs: int, seed: int, min_words: int = 3, max_words: int = 6,
                   exclude: frozenset[str] = frozenset()) -> list[PreferencePair]:
    """`num_pairs` distinct pairs whose prompt is not in `exclude` (to keep splits disjoint)."""
    rng = np.random.default_rng(seed)
    pairs, seen = [], set(exclude)
    while len(pairs) < num_pairs:
        instruction = INSTRUCTIONS[rng.integers(len(INSTRUCTIONS))]
        count = int(rng.integers(min_words, max_words + 1))
        words = [str(w) for w in rng.choice(CONTENT_WORDS, size=count, replace=False)]
        prompt = f"please {instruction} these words : {' '.join(words)}"
        if prompt in seen:
            continue
        seen.add(prompt)
        answer = words if instruction == "repeat" else words[::-1]
        wrong = _near_miss(words, answer, instruction, rng)
        pairs.append(PreferencePair(
            prompt=[{"role": "user", "content": prompt}],
            chosen=" ".join(answer), rejected=" ".join(wrong),
        ))
    return pairs


def generate_splits(num_train: int, num_validation: int, num_test: int,
                    seed: int) -> dict[str, list[PreferencePair]]:
    """Train, validation and test with pairwise-disjoint prompts, from one seed."""
    splits, used = {}, set()
    for offset, (name, size) in enumerate(
            (("test", num_test), ("validation", num_validation), ("train", num_train))):
        split = generate_pairs(size, seed * 1000 + offset, exclude=frozenset(used))
        used.update(p.prompt[0]["content"] for p in split)
        splits[name] = split
    return {name: splits[name] for name in ("train", "validation", "test")}
