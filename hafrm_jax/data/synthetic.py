"""The embedded default task: a preference dataset with a known right answer, and its tokenizer.

The user asks the assistant to repeat or reverse a list of words of one kind (fruits, colours,
animals, numbers or weather). The chosen response does it exactly; the rejected response is a
near miss of one of three kinds: a word swapped for one of another kind (a colour among fruits),
a word left out, or (for "reverse") the list repeated unreversed. A reward model that reads the
prompt can tell them apart every time, so held-out accuracy measures how much of the rule it
learned, and label noise (flipping training pairs) can be dialled in.

(A first version swapped in any word absent from the prompt: telling that apart needs a
token-identity match that a 2-layer model finds late and erratically, 0.74-0.91 held-out
accuracy over seeds; a word of another kind is found reliably, 0.95-0.97.)

Everything is generated locally: a word-level tokenizer built with `tokenizers` and wrapped as a
transformers `PreTrainedTokenizerFast` with a chat template, so the rest of the pipeline treats
it exactly like a real model's tokenizer.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hafrm_jax.data.records import PreferencePair, user_turn

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
TEMPLATE_WORDS = ("user", "assistant", ":", "please", "repeat", "reverse", "these", "words")
CATEGORIES = (
    tuple("apple banana cherry grape lemon mango melon peach pear plum".split()),
    tuple("red blue green black white pink gray gold brown orange".split()),
    tuple("cat dog fox owl bee cow pig hen ant bat".split()),
    tuple("one two three four five six seven eight nine ten".split()),
    tuple("sun moon star rain snow wind fire ice rock sand".split()),
)
CONTENT_WORDS = tuple(w for category in CATEGORIES for w in category)
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


def _near_miss(words: list[str], answer: list[str], instruction: str, category: int,
               rng: np.random.Generator) -> list[str]:
    """A wrong answer that differs from `answer` in one place."""
    kinds = ["substitute", "drop"] + (["unreversed"] if instruction == "reverse" else [])
    kind = kinds[rng.integers(len(kinds))]
    wrong = list(answer)
    if kind == "substitute":
        other = [w for c, words_of in enumerate(CATEGORIES) if c != category for w in words_of]
        wrong[rng.integers(len(wrong))] = other[rng.integers(len(other))]
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
        category = int(rng.integers(len(CATEGORIES)))
        words = [str(w) for w in rng.choice(CATEGORIES[category], size=count, replace=False)]
        prompt = f"please {instruction} these words : {' '.join(words)}"
        if prompt in seen:
            continue
        seen.add(prompt)
        answer = words if instruction == "repeat" else words[::-1]
        wrong = _near_miss(words, answer, instruction, category, rng)
        pairs.append(PreferencePair(
            prompt=user_turn(prompt),
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
