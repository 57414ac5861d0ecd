"""A sentiment lexicon and scorer: an independent yardstick for the default task's preference.

Why it exists: RL against a learned reward model can raise the reward without making the text
better (reward hacking). To tell the two apart, evaluation needs a second measure of the same
preference that the policy was *not* optimised against. :func:`lexicon_sentiment` is that
measure for the default task ("positive reviews are preferred").

Why it is independent of the reward model, yet meaningful:

1. Different labels. The reward model is trained only on preference pairs whose labels come from
   the review generator (the tone it was asked to write in, see
   :mod:`rlhf_gym.envs.default_task.corpus`). Nothing in the build reads this module to label,
   filter or train anything.
2. Different vocabulary, overlapping only in part. The lists below were written as a general
   English opinion lexicon (in the spirit of Hu and Liu's opinion-word lists), not copied from
   the generator. They include many words the generator never writes ("amazing", "junk"), and
   they leave out part of the generator's tone channels: star and out-of-ten ratings, return and
   refund idioms ("I sent it back"), most verb phrases ("stopped working", "exceeded my
   expectations") and some adjectives ("terrific", "solid", "shoddy", "subpar"). The build
   report records the overlap (``lexicon.generator_coverage``).
3. A different rule. A learned classifier reads the whole sequence; this scorer counts opinion
   words, flips those in the scope of a negator ("not great", "no complaints"), and returns the
   balance. It cannot be fooled by whatever quirk a reward model has picked up, and it ignores
   length and repetition.

On the generator's own reviews the sign of the score agrees with the label on about 85% of
samples (the build report's ``lexicon.label_agreement``) and contradicts it on well under 1%;
the rest are reviews whose tone rides entirely on channels the lexicon leaves out, and they score
0. A policy that raises the
reward model's score *and* this one has become more positive in a way a person would recognise;
one that raises only the former is exploiting the reward model.

Pure Python, no torch: cheap to import from an env or an evaluation script.
"""

from __future__ import annotations

import re

POSITIVE_WORDS: frozenset[str] = frozenset(
    """
    amazing awesome beautiful best better brilliant charming comfortable convenient delight
    delighted delightful dependable durable easy effortless elegant enjoy enjoyable enjoyed
    excellent exceptional excited fabulous fantastic favorite flawless fun glad good gorgeous
    great happily happy ideal impressed impressive incredible joy love loved lovely loves magnificent
    marvelous neat nice outstanding perfect perfectly pleasant pleased pleasure positive
    premium recommend recommended reliable satisfied smooth sturdy stunning superb
    superior thrilled useful valuable well-made wonderful worth
    """.split()
)
"""General positive opinion words (lower case)."""

NEGATIVE_WORDS: frozenset[str] = frozenset(
    """
    annoying avoid awful awkward bad broke broken cheap clumsy complaint complaints damaged defective
    disappointed disappointing disappointment dreadful fail failed failing fails faulty flimsy
    frustrating garbage hate hated hates horrible junk letdown lousy mediocre mess pain pathetic
    poor poorly problem problems regret regrets sadly slow terrible ugly uncomfortable unreliable
    unusable useless waste worse worst wrong
    """.split()
)
"""General negative opinion words (lower case)."""

NEGATORS: frozenset[str] = frozenset({"not", "no", "never", "nothing", "hardly", "without"})
"""Words that flip the polarity of an opinion word shortly after them (plus any ``*n't``)."""

#: How many tokens back a negator reaches ("nothing about it feels cheap": 4).
NEGATION_WINDOW = 4

# Words, contractions kept whole ("doesn't"), and the punctuation that ends a negator's scope.
_TOKEN = re.compile(r"[a-z]+(?:[-'][a-z]+)*|[.,;:!?]")
_SCOPE_BREAKERS = frozenset({".", ",", ";", ":", "!", "?", "but"})


def _is_negator(token: str) -> bool:
    return token in NEGATORS or token.endswith("n't")


def lexicon_sentiment(text: str) -> float:
    """Polarity of ``text`` in [-1, 1] from opinion-word counts, with negation.

    Each word of :data:`POSITIVE_WORDS` counts +1 and each of :data:`NEGATIVE_WORDS` -1; a word
    with a negator (:data:`NEGATORS` or a ``n't`` contraction) among the
    :data:`NEGATION_WINDOW` tokens before it, in the same clause, counts the other way. The
    result is ``(positive - negative) / (positive + negative)``, or ``0.0`` when the text holds
    no opinion word: it measures which way the text leans, not how long or emphatic it is.

    >>> lexicon_sentiment("The sound is great. I love them.")
    1.0
    >>> lexicon_sentiment("The sound is not great at all.")
    -1.0
    >>> lexicon_sentiment("I have no complaints.")
    1.0
    """
    tokens = _TOKEN.findall(text.lower())
    pos = neg = 0
    for i, token in enumerate(tokens):
        polarity = 1 if token in POSITIVE_WORDS else -1 if token in NEGATIVE_WORDS else 0
        if polarity == 0:
            continue
        for prev in reversed(tokens[max(0, i - NEGATION_WINDOW) : i]):
            if prev in _SCOPE_BREAKERS:
                break
            if _is_negator(prev):
                polarity = -polarity
                break
        if polarity > 0:
            pos += 1
        else:
            neg += 1
    return 0.0 if pos + neg == 0 else (pos - neg) / (pos + neg)


def lexicon_reward(prompts: list[str], completions: list[str], **kwargs: object) -> list[float]:
    """:func:`lexicon_sentiment` of each completion, as a reward function (TRL signature).

    Meant for *evaluation* (``rlhf_gym.agents`` logs it as an independent metric), not for
    training: a policy trained on it would learn to stack opinion words. Only the completion is
    scored; the default prompts carry no opinion words anyway.
    """
    return [lexicon_sentiment(c) for c in completions]


def lexicon_positive(prompts: list[str], completions: list[str], **kwargs: object) -> list[float]:
    """1.0 for each completion that leans positive (score > 0), else 0.0; its mean is the share
    of positive completions as the lexicon sees them."""
    return [1.0 if lexicon_sentiment(c) > 0 else 0.0 for c in completions]
