"""The synthetic review language of the default task: a small grammar with a known preference.

Why a grammar and not a real corpus: nothing here reaches a model hub or a data set server, and
the default task must be rebuilt from nothing in minutes. A grammar also gives every review a
*true* label (the tone the generator was asked for), so the reward model learns from labels that
are right by construction, and the RL phase has a preference a person recognises at a glance:
positive product reviews over negative ones.

A review is an *opening* plus a *body*::

    I bought this tent last week and | the zipper is really flimsy. I sent it back.
    \\________ opening (prompt) ______/ \\______________ body (continuation) ____________/

Openings are neutral: they name the product and set up a sentence, but carry no tone, and each is
drawn independently of the label. So for any opening the corpus holds positive and negative
bodies in equal measure, and a language model trained on it continues a neutral prompt either
way about half the time, which is what gives RL something to shift.

Bodies are one to three sentences drawn from several kinds (an opinion about one aspect of the
product, a verb phrase about the product, a feeling, a contrast, a negation, a closing verdict,
a neutral aside), each with product-specific aspects, intensifiers and agreement ("it works" /
"they work"), so the language is varied enough that a small LM has to learn its structure rather
than memorise reviews. Tone is carried by several channels on purpose (opinion adjectives, verb
phrases, star ratings and "I sent it back" idioms, negations), which is what lets the lexicon in
:mod:`rlhf_gym.envs.default_task.lexicon` cover only part of them and stay an independent measure.

Everything is deterministic given a :class:`random.Random`; nothing here imports torch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Label = Literal["positive", "negative"]
Join = Literal["sentence", "clause"]

LABELS: tuple[Label, Label] = ("positive", "negative")

#: Longest body, in words, the generator emits; keeps a continuation (plus EOS) within the
#: default ``max_new_tokens`` of 24 tokens.
MAX_BODY_WORDS = 16


@dataclass(frozen=True)
class Product:
    """A product kind: its name, grammatical number and aspects a reviewer talks about."""

    name: str
    plural: bool
    aspects: tuple[str, ...]


PRODUCTS: tuple[Product, ...] = (
    Product("headphones", True, ("sound", "bass", "battery life", "ear padding")),
    Product("coffee maker", False, ("coffee", "carafe", "water tank", "brewing speed")),
    Product("hiking boots", True, ("grip", "ankle support", "waterproofing", "sole")),
    Product("novel", False, ("plot", "ending", "main character", "writing")),
    Product("blender", False, ("motor", "blade", "jug", "lid")),
    Product("backpack", False, ("zipper", "shoulder strap", "padding", "main pocket")),
    Product("tent", False, ("zipper", "rain fly", "floor", "setup")),
    Product("phone case", False, ("grip", "fit", "button cover", "finish")),
    Product("desk lamp", False, ("light", "switch", "base", "brightness")),
    Product("vacuum cleaner", False, ("suction", "filter", "cord", "noise level")),
    Product("running shoes", True, ("cushioning", "fit", "sole", "lacing")),
    Product("board game", False, ("rulebook", "artwork", "replay value", "box")),
    Product("electric kettle", False, ("lid", "handle", "boiling speed", "switch")),
    Product("office chair", False, ("seat", "back support", "armrest", "height lever")),
    Product("yoga mat", False, ("grip", "thickness", "surface", "smell")),
    Product("air fryer", False, ("basket", "timer", "cooking speed", "display")),
    Product("smartwatch", False, ("screen", "battery life", "strap", "step counter")),
    Product("water bottle", False, ("lid", "insulation", "finish", "straw")),
    Product("bluetooth speaker", False, ("sound", "battery life", "bass", "range")),
    Product("rice cooker", False, ("rice", "inner pot", "timer", "steam vent")),
    Product("winter jacket", False, ("hood", "zipper", "lining", "warmth")),
    Product("kitchen knife", False, ("blade", "handle", "edge", "balance")),
    Product("sunglasses", True, ("lens tint", "frame", "fit", "hinge")),
    Product("toaster", False, ("browning", "crumb tray", "lever", "timer")),
    Product("video game", False, ("story", "controls", "graphics", "soundtrack")),
    Product("mattress", False, ("firmness", "edge support", "cover", "smell")),
    Product("umbrella", False, ("canopy", "handle", "frame", "button")),
    Product("keyboard", False, ("key feel", "backlight", "layout", "cable")),
    Product("gaming mouse", False, ("sensor", "scroll wheel", "grip", "cable")),
    Product("electric toothbrush", False, ("battery life", "brush head", "timer", "charger")),
)

# --- The generator's own tone vocabulary. The lexicon module keeps a separate list. ---------

_POS_ADJ = (
    "great", "excellent", "fantastic", "superb", "wonderful", "outstanding", "impressive",
    "lovely", "brilliant", "perfect", "terrific", "solid", "top-notch", "remarkable", "splendid",
    "reliable", "sturdy", "comfortable",
)  # fmt: skip
_NEG_ADJ = (
    "terrible", "awful", "poor", "disappointing", "horrible", "mediocre", "useless", "flimsy",
    "cheap", "pathetic", "shoddy", "subpar", "weak", "bad", "lousy", "dreadful", "faulty",
    "uncomfortable",
)  # fmt: skip
_ADV = ("", "", "", "really ", "very ", "truly ", "quite ", "surprisingly ", "absolutely ",
        "honestly ", "pretty ", "incredibly ")  # fmt: skip

# Verb phrases whose subject is the product; {s}/{is}/{has}/{does} agree with its number.
_POS_VP = (
    "work{s} perfectly", "{does} exactly what I need", "exceeded my expectations",
    "{has} held up well", "feel{s} well made", "{is} worth every penny", "{was} easy to set up",
    "{is} a joy to use", "never let{s} me down", "arrived early and work{s} great",
    "made my life easier", "keep{s} getting better",
)  # fmt: skip
_NEG_VP = (
    "stopped working after {n} days", "broke within a week", "feel{s} cheap",
    "fell apart after a month", "never worked properly", "arrived damaged", "{is} a pain to use",
    "keep{s} failing", "let me down", "{is} a waste of money", "died after {n} uses",
    "{is} hard to set up",
)  # fmt: skip

_POS_ASPECT = (
    "the {aspect} is {adv}{adj}.", "the {aspect} was {adv}{adj} from day one.",
    "I found the {aspect} {adv}{adj}.", "the {aspect} turned out {adv}{adj}.",
    "honestly, the {aspect} is {adj}.",
)  # fmt: skip
_NEG_ASPECT = _POS_ASPECT

_POS_PRODUCT = ("{it} {vp}.", "so far {it} {vp}.", "happily, {it} {vp}.")
_NEG_PRODUCT = ("{it} {vp}.", "sadly, {it} {vp}.", "after a while {it} {vp}.")

_POS_FEELING = (
    "I love {obj}.", "I am {adv}happy with {obj}.", "I use {obj} every day.",
    "my {person} loves {obj} too.", "I am glad I bought {obj}.", "it made my week.",
)  # fmt: skip
_NEG_FEELING = (
    "I regret buying {obj}.", "I am {adv}disappointed.", "I hate {obj}.",
    "my {person} hates {obj} too.", "I wish I had never bought {obj}.", "what a letdown.",
)  # fmt: skip

_POS_CONTRAST = (
    "the {aspect} could be better, but the {aspect2} is {adj}.",
    "{it} {is} not cheap, but {it} {is} {adj}.",
    "I was worried about the {aspect}, but it is {adj}.",
)
_NEG_CONTRAST = (
    "the {aspect} looks nice, but the {aspect2} is {adj}.",
    "I wanted to like {obj}, but the {aspect} is {adj}.",
    "the box was pretty, but the {aspect} is {adj}.",
)

_POS_NEGATION = (
    "I have no complaints.", "not a single problem so far.", "the {aspect} never fails.",
    "nothing about {obj} feels cheap.",
)  # fmt: skip
_NEG_NEGATION = (
    "the {aspect} is not {padj} at all.", "{it} {does}n't work as advertised.",
    "I would not recommend {obj}.", "not worth the money.",
)  # fmt: skip

_POS_CLOSING = (
    "highly recommended.", "five stars.", "I would buy {obj} again.", "I will buy another one.",
    "worth every penny.", "I would recommend {obj} to anyone.", "ten out of ten.",
)  # fmt: skip
_NEG_CLOSING = (
    "avoid {obj}.", "one star.", "I sent {obj} back.", "I returned {obj} the next day.",
    "do not buy this.", "save your money.", "two out of ten.",
)  # fmt: skip

_NEUTRAL = (
    "I use {obj} {usage}.", "{it} came in a {color} box.", "I paid {price} dollars for {obj}.",
    "my {person} picked the color.", "I mostly use {obj} {usage}.",
)  # fmt: skip

_PERSON = ("wife", "husband", "son", "daughter", "friend", "mother", "father", "sister",
           "brother", "roommate", "partner", "neighbor")  # fmt: skip
_USAGE = ("at home", "at work", "on weekends", "every morning", "for travel", "in the evening",
          "at the office", "on trips")  # fmt: skip
_COLOR = ("blue", "white", "black", "green", "brown", "red", "gray")
_PRICE = ("twenty", "thirty", "forty", "fifty", "sixty", "eighty", "ninety")
_NUM = ("two", "three", "four", "five", "ten")
_WHEN = ("last week", "yesterday", "a month ago", "on Monday", "two weeks ago", "last year",
         "in the spring", "on sale", "for my trip", "last weekend")  # fmt: skip
_DURATION = ("a week", "two weeks", "a month", "three months", "a year", "a few days")

# Openings: neutral beginnings that name the product. "sentence" openings are followed by a
# capitalised sentence, "clause" openings by a lower-case clause.
OPENINGS: tuple[tuple[str, Join], ...] = (
    ("Review of the {p}:", "sentence"),
    ("My review of the {p}:", "sentence"),
    ("Quick thoughts on the {p}:", "sentence"),
    ("About the {p}:", "sentence"),
    ("Update on the {p} I bought {when}:", "sentence"),
    ("So I finally tried the {p}.", "sentence"),
    ("The {p} arrived {when}.", "sentence"),
    ("Here is my take on the {p}.", "sentence"),
    ("I bought {this} {p} {when} and", "clause"),
    ("I got the {p} as a gift and", "clause"),
    ("We ordered the {p} {when} and", "clause"),
    ("I have had the {p} for {dur} and", "clause"),
    ("My {person} bought me the {p} and", "clause"),
    ("After {dur} with the {p},", "clause"),
    ("I picked up the {p} {when}, and", "clause"),
)

# Sentence kinds and how often each is drawn; closings go last, neutral asides at most once.
_KINDS = ("aspect", "product", "feeling", "contrast", "negation", "closing", "neutral")
_KIND_WEIGHTS = (5, 4, 3, 2, 2, 3, 1)


@dataclass(frozen=True)
class Review:
    """One generated review: ``text == opening + body``; ``label`` is the tone asked for."""

    opening: str
    body: str
    label: Label
    topic: str

    @property
    def text(self) -> str:
        return self.opening + self.body


def _agreement(product: Product) -> dict[str, str]:
    if product.plural:
        return {"it": "they", "obj": "them", "is": "are", "was": "were", "has": "have",
                "does": "do", "s": ""}  # fmt: skip
    return {"it": "it", "obj": "it", "is": "is", "was": "was", "has": "has", "does": "does",
            "s": "s"}  # fmt: skip


def sample_opening(rng: random.Random, product: Product | None = None) -> tuple[str, Join, Product]:
    """A neutral opening (the prompt), its join type and the product it names."""
    product = product or rng.choice(PRODUCTS)
    template, join = rng.choice(OPENINGS)
    text = template.format(
        p=product.name,
        this="these" if product.plural else "this",
        when=rng.choice(_WHEN),
        dur=rng.choice(_DURATION),
        person=rng.choice(_PERSON),
    )
    return text, join, product


def _sentence(rng: random.Random, kind: str, label: Label, product: Product) -> str:
    pos = label == "positive"
    agree = _agreement(product)
    aspect, aspect2 = rng.sample(product.aspects, 2)
    if kind == "aspect":
        template = rng.choice(_POS_ASPECT if pos else _NEG_ASPECT)
    elif kind == "product":
        template = rng.choice(_POS_PRODUCT if pos else _NEG_PRODUCT)
    elif kind == "feeling":
        template = rng.choice(_POS_FEELING if pos else _NEG_FEELING)
    elif kind == "contrast":
        template = rng.choice(_POS_CONTRAST if pos else _NEG_CONTRAST)
    elif kind == "negation":
        template = rng.choice(_POS_NEGATION if pos else _NEG_NEGATION)
    elif kind == "closing":
        template = rng.choice(_POS_CLOSING if pos else _NEG_CLOSING)
    else:
        template = rng.choice(_NEUTRAL)
    vp = rng.choice(_POS_VP if pos else _NEG_VP).format(n=rng.choice(_NUM), **agree)
    return template.format(
        aspect=aspect,
        aspect2=aspect2,
        adv=rng.choice(_ADV),
        adj=rng.choice(_POS_ADJ if pos else _NEG_ADJ),
        padj=rng.choice(_POS_ADJ),
        vp=vp,
        person=rng.choice(_PERSON),
        usage=rng.choice(_USAGE),
        color=rng.choice(_COLOR),
        price=rng.choice(_PRICE),
        **agree,
    )


def _plan(rng: random.Random, join: Join) -> list[str]:
    """Sentence kinds for one body: 1-3 sentences, at least one carrying tone."""
    n = rng.choice((1, 2, 2, 2, 3))
    kinds: list[str] = []
    while len(kinds) < n:
        kind = rng.choices(_KINDS, weights=_KIND_WEIGHTS)[0]
        if kind == "neutral" and ("neutral" in kinds or n == 1):
            continue
        if kind == "closing" and (not kinds and join == "clause"):
            continue  # "... and five stars." reads badly; a verdict never opens a clause
        if kind in kinds:
            continue
        kinds.append(kind)
    if "closing" in kinds:  # a verdict ends the review
        kinds.remove("closing")
        kinds.append("closing")
    if kinds == ["neutral"]:
        kinds.append("aspect")
    return kinds


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def sample_body(rng: random.Random, label: Label, product: Product, join: Join) -> str:
    """A continuation of an opening in the given tone, with a leading space (as a completion)."""
    while True:
        sentences = [_sentence(rng, kind, label, product) for kind in _plan(rng, join)]
        parts = [
            s if (i == 0 and join == "clause") else _capitalise(s) for i, s in enumerate(sentences)
        ]
        body = " " + " ".join(parts)
        if len(body.split()) <= MAX_BODY_WORDS:
            return body


def sample_review(rng: random.Random, label: Label) -> Review:
    """One review in the given tone, on a random product, with a random neutral opening."""
    opening, join, product = sample_opening(rng)
    return Review(opening, sample_body(rng, label, product, join), label, product.name)


def generate_reviews(n: int, seed: int) -> list[Review]:
    """``n`` reviews (``n`` even), exactly half of each tone, shuffled; deterministic in ``seed``."""
    rng = random.Random(seed)
    labels: list[Label] = [LABELS[i % 2] for i in range(n)]
    rng.shuffle(labels)
    return [sample_review(rng, label) for label in labels]


def generate_prompts(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Disjoint train and eval prompt sets: unique neutral openings with their ``topic``.

    Rows are dicts ``{"id", "prompt", "topic"}``; eval openings never appear among train ones, so
    evaluation measures the policy on prompts it was not optimised on.
    """
    rng = random.Random(seed)
    seen: dict[str, str] = {}
    attempts = 0
    while len(seen) < n_train + n_eval:
        attempts += 1
        if attempts > 100 * (n_train + n_eval):
            raise ValueError(
                f"the opening grammar has too few distinct prompts for {n_train}+{n_eval}; "
                "lower n_train/n_eval"
            )
        text, _, product = sample_opening(rng)
        seen.setdefault(text, product.name)
    items = list(seen.items())  # insertion order: deterministic
    rng.shuffle(items)
    rows = [{"prompt": p, "topic": t} for p, t in items]
    train = [{"id": f"train-{i:05d}", **r} for i, r in enumerate(rows[:n_train])]
    eval_ = [{"id": f"eval-{i:05d}", **r} for i, r in enumerate(rows[n_train:])]
    return train, eval_


def generate_preference_pairs(prompts: list[dict], seed: int) -> list[dict]:
    """One (prompt, chosen, rejected) pair per prompt row: same opening, positive vs negative body.

    Labels come from the generator (the tone it was asked for), never from the lexicon, so the
    reward model trained on these pairs is independent of the lexicon scorer.
    """
    rng = random.Random(seed)
    by_name = {p.name: p for p in PRODUCTS}
    pairs = []
    for row in prompts:
        product = by_name[row["topic"]]
        join = _join_of(row["prompt"])
        chosen = sample_body(rng, "positive", product, join)
        rejected = sample_body(rng, "negative", product, join)
        pairs.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected,
                      "topic": row["topic"]})  # fmt: skip
    return pairs


def _join_of(opening: str) -> Join:
    return "clause" if opening.endswith((",", " and")) else "sentence"


def tone_words() -> tuple[frozenset[str], frozenset[str]]:
    """Lower-case words the generator writes only in positive / only in negative sentences.

    Words that also occur in openings or neutral asides ("so", "after") are not tone words. Used
    to measure how much of the generator's tone vocabulary the lexicon covers (it covers part of
    it by design; see :mod:`rlhf_gym.envs.default_task.lexicon`).
    """

    def words(templates: tuple[str, ...]) -> set[str]:
        out: set[str] = set()
        for t in templates:
            for w in t.replace(",", " ").replace(".", " ").replace(":", " ").split():
                if "{" not in w:
                    out.add(w.lower())
        return out

    neutral = words(tuple(t for t, _ in OPENINGS) + _NEUTRAL + _WHEN + _DURATION)
    pos = words(_POS_ADJ + _POS_VP + _POS_PRODUCT + _POS_FEELING + _POS_CONTRAST
                + _POS_NEGATION + _POS_CLOSING)  # fmt: skip
    neg = words(_NEG_ADJ + _NEG_VP + _NEG_PRODUCT + _NEG_FEELING + _NEG_CONTRAST
                + _NEG_NEGATION + _NEG_CLOSING)  # fmt: skip
    return frozenset(pos - neg - neutral), frozenset(neg - pos - neutral)
