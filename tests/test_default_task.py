"""The embedded default task: generator, lexicon, builder and the committed assets.

Three groups:

* pure-Python properties of the review generator and the lexicon (fast);
* a ``--quick`` build in a temporary folder (a few seconds each; built twice): deterministic,
  and loadable through the ordinary ``from_pretrained`` calls;
* the committed assets in ``envs/default_task/assets``: they load, are small, and do what the
  task promises (the reward model prefers positive reviews it never saw; the base policy writes
  both tones).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

import rlhf_gym.envs.default_task as task
from rlhf_gym.envs.default_task import corpus as gen
from rlhf_gym.envs.default_task.lexicon import (
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    lexicon_sentiment,
)

EOS = "<|endoftext|>"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# --- generator --------------------------------------------------------------------------------


def test_reviews_are_deterministic_balanced_and_varied() -> None:
    a = gen.generate_reviews(2_000, seed=7)
    b = gen.generate_reviews(2_000, seed=7)
    assert a == b
    assert a != gen.generate_reviews(2_000, seed=8)
    assert sum(r.label == "positive" for r in a) == 1_000
    assert len({r.topic for r in a}) >= 20
    # Varied: almost no review repeats, and bodies do not all share one shape.
    assert len({r.text for r in a}) >= 0.98 * len(a)
    assert len({r.body for r in a}) >= 0.9 * len(a)
    for r in a:
        assert r.text == r.opening + r.body
        assert r.body.startswith(" ") and r.body.endswith(".")
        assert len(r.body.split()) <= gen.MAX_BODY_WORDS


def test_prompts_are_neutral_disjoint_and_unique() -> None:
    train, eval_ = gen.generate_prompts(500, 100, seed=3)
    assert (train, eval_) == gen.generate_prompts(500, 100, seed=3)
    assert len(train) == 500 and len(eval_) == 100
    train_set = {r["prompt"] for r in train}
    assert len(train_set) == 500
    assert train_set.isdisjoint(r["prompt"] for r in eval_)
    products = {p.name for p in gen.PRODUCTS}
    for row in train + eval_:
        assert set(row) == {"id", "prompt", "topic"}
        assert row["topic"] in products and row["topic"] in row["prompt"]
        # Neutral: no opinion word at all, so the tone is left to the continuation.
        words = {w.strip(",.:").lower() for w in row["prompt"].split()}
        assert not words & (POSITIVE_WORDS | NEGATIVE_WORDS), row["prompt"]


def test_preference_pairs_share_the_prompt_and_differ_in_tone() -> None:
    train, _ = gen.generate_prompts(300, 0, seed=1)
    pairs = gen.generate_preference_pairs(train, seed=2)
    assert len(pairs) == 300
    leaning = 0
    for row, pair in zip(train, pairs, strict=True):
        assert pair["prompt"] == row["prompt"] and pair["topic"] == row["topic"]
        assert pair["chosen"] != pair["rejected"]
        leaning += lexicon_sentiment(pair["chosen"]) > lexicon_sentiment(pair["rejected"])
    # The lexicon (never used to make the pairs) sees the chosen side as more positive.
    assert leaning / len(pairs) > 0.7


# --- lexicon ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The sound is great. I love them.", 1.0),
        ("It broke within a week. Terrible.", -1.0),
        ("The sound is not great at all.", -1.0),
        ("I have no complaints.", 1.0),
        ("Nothing about it feels cheap.", 1.0),
        ("I would not recommend it.", -1.0),
        ("I didn't hate it.", 1.0),
        # Scope ends at punctuation and at "but": only "cheap" is negated here.
        ("It is not cheap, but it is great.", 1.0),
        ("Not bad. Terrible!", 0.0),
        ("The lid is great, the handle is awful.", 0.0),
        ("It arrived on Monday.", 0.0),
        ("", 0.0),
    ],
)
def test_lexicon_sentiment_rule(text: str, expected: float) -> None:
    assert lexicon_sentiment(text) == expected


def test_lexicon_lists_are_lower_case_and_disjoint() -> None:
    assert POSITIVE_WORDS.isdisjoint(NEGATIVE_WORDS)
    for word in POSITIVE_WORDS | NEGATIVE_WORDS:
        assert word == word.lower() and " " not in word


def test_lexicon_agrees_with_generator_labels_yet_is_not_a_copy_of_its_vocabulary() -> None:
    reviews = gen.generate_reviews(4_000, seed=11)
    signed = [(lexicon_sentiment(r.text), 1 if r.label == "positive" else -1) for r in reviews]
    agreement = sum(s * y > 0 for s, y in signed) / len(signed)
    contradiction = sum(s * y < 0 for s, y in signed) / len(signed)
    assert agreement > 0.8  # meaningful: it reads the tone of most reviews right ...
    assert contradiction < 0.02  # ... and almost never the wrong way round
    # Independent: part of the generator's tone vocabulary is unknown to the lexicon (star
    # ratings, "sent it back", "terrific", ...), so some reviews carry no lexicon signal at all.
    pos_words, neg_words = gen.tone_words()
    assert not pos_words <= POSITIVE_WORDS and not neg_words <= NEGATIVE_WORDS
    assert {"stars", "terrific", "solid"} <= pos_words - POSITIVE_WORDS
    assert {"star", "returned", "shoddy"} <= neg_words - NEGATIVE_WORDS
    assert sum(s == 0 for s, _ in signed) / len(signed) > 0.05


def test_independent_metrics_are_reward_functions() -> None:
    from rlhf_gym.rewards import resolve_reward

    completions = [" I love it. Five stars.", " It broke within a week.", " One star."]
    prompts = ["Review of the tent:"] * 3
    metrics = task.independent_metrics()
    assert set(metrics) == {"lexicon_sentiment", "lexicon_positive"}
    sentiment = resolve_reward(metrics["lexicon_sentiment"])(prompts, completions)
    positive = resolve_reward(metrics["lexicon_positive"])(prompts, completions)
    assert sentiment.total.tolist() == [1.0, -1.0, 0.0]
    assert positive.total.tolist() == [1.0, 0.0, 0.0]


# --- package API ------------------------------------------------------------------------------


def test_defaults_are_frozen() -> None:
    assert (task.DEFAULTS.max_prompt_tokens, task.DEFAULTS.max_new_tokens) == (16, 24)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.DEFAULTS.max_new_tokens = 5  # type: ignore[misc]


def test_missing_assets_say_how_to_build_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task, "ASSETS_DIR", tmp_path / "nowhere")
    for get in (task.policy_path, task.tokenizer_path, task.reward_model_path, task.prompts_path):
        with pytest.raises(task.DefaultTaskAssetsMissing, match="default_task.build"):
            get()
    with pytest.raises(FileNotFoundError):  # the error is also a FileNotFoundError
        task.prompts_path("eval")
    with pytest.raises(task.DefaultTaskAssetsMissing, match="default_task.build"):
        task.positive_threshold()
    with pytest.raises(ValueError, match="split"):
        task.prompts_path("test")  # type: ignore[arg-type]


def test_package_imports_nothing_heavy() -> None:
    # Import this subpackage on its own (the parent env package is stubbed out), in a fresh
    # interpreter, and check it pulled in neither torch nor transformers.
    code = (
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('rlhf_gym.envs')\n"
        "pkg = types.ModuleType('rlhf_gym.envs')\n"
        "pkg.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['rlhf_gym.envs'] = pkg\n"
        "import rlhf_gym.envs.default_task as t\n"
        "t.DEFAULTS, t.ASSETS_DIR, t.lexicon_sentiment('great')\n"
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'numpy') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the quick build --------------------------------------------------------------------------

BUILD_FILES = (
    "prompts_train.jsonl",
    "prompts_eval.jsonl",
    "preferences.jsonl",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "policy/model.safetensors",
    "policy/config.json",
    "reward_model/model.safetensors",
    "reward_model/config.json",
)


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory: pytest.TempPathFactory):
    from rlhf_gym.envs.default_task.build import build

    out = tmp_path_factory.mktemp("quick_a")
    return out, build(out, seed=0, quick=True, num_threads=1, progress=False)


def test_quick_build_is_deterministic(quick_build, tmp_path: Path) -> None:
    from rlhf_gym.envs.default_task.build import build

    first, _ = quick_build
    # A rebuild replaces the build's own entries and leaves anything else alone.
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "stale.bin").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("mine")
    build(tmp_path, seed=0, quick=True, num_threads=1, progress=False)
    assert not (tmp_path / "policy" / "stale.bin").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    for name in BUILD_FILES:
        assert (first / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_quick_build_assets_load(quick_build) -> None:
    out, report = quick_build
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert tok.eos_token == tok.bos_token == tok.pad_token == EOS
    assert tok("I bought this tent")["input_ids"][0] != tok.eos_token_id  # no BOS added
    lm = AutoModelForCausalLM.from_pretrained(out / "policy")
    rm = AutoModelForSequenceClassification.from_pretrained(out / "reward_model")
    assert lm.config.vocab_size == rm.config.vocab_size == len(tok)
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    assert AutoTokenizer.from_pretrained(out / "policy").get_vocab() == tok.get_vocab()
    assert len(_read_jsonl(out / "prompts_train.jsonl")) >= 500
    assert len(_read_jsonl(out / "prompts_eval.jsonl")) >= 100
    saved = json.loads((out / "build_report.json").read_text())
    assert saved == report.to_dict()
    assert saved["quick"] is True and math.isfinite(saved["policy"]["heldout_perplexity"])
    assert 0.0 <= saved["reward_model"]["heldout_accuracy"] <= 1.0
    assert math.isfinite(saved["reward_model"]["positive_threshold"])


# --- the committed assets ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads((task.ASSETS_DIR / "build_report.json").read_text())


def test_committed_assets_are_small_and_complete(report: dict) -> None:
    files = [p for p in task.ASSETS_DIR.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total < 20 * 1024 * 1024, f"assets are {total / 1e6:.1f} MB"
    assert report["quick"] is False
    for path in (task.policy_path(), task.reward_model_path()):
        assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
        assert not list(path.glob("*.bin"))  # safetensors only
    assert len(_read_jsonl(task.prompts_path("train"))) >= 500
    assert len(_read_jsonl(task.prompts_path("eval"))) >= 100


def test_committed_report_figures(report: dict) -> None:
    assert 1.0 < report["policy"]["heldout_perplexity"] < 5.0
    assert report["reward_model"]["heldout_accuracy"] >= 0.9
    assert report["reward_model"]["trainer_eval_accuracy"] >= 0.9
    assert report["reward_model"]["threshold_label_accuracy"] >= 0.9
    assert report["lexicon"]["label_agreement"] > 0.8


def test_committed_prompts_fit_the_defaults() -> None:
    tok = AutoTokenizer.from_pretrained(task.tokenizer_path())
    for split in ("train", "eval"):
        for row in _read_jsonl(task.prompts_path(split)):
            assert {"prompt", "topic"} <= set(row)
            n = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
            assert n <= task.DEFAULTS.max_prompt_tokens, row


def test_committed_policy_loads_and_matches_its_report(report: dict) -> None:
    tok = AutoTokenizer.from_pretrained(task.policy_path())
    lm = AutoModelForCausalLM.from_pretrained(task.policy_path()).eval()
    cfg = lm.config
    assert (cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop) == (0.0, 0.0, 0.0)
    assert cfg.eos_token_id == cfg.pad_token_id == tok.eos_token_id
    assert cfg.vocab_size == len(tok) and cfg.n_positions >= 64
    assert sum(p.numel() for p in lm.parameters()) == report["policy"]["n_params"]
    # Perplexity on reviews the build never generated (another seed) is close to the report's.
    reviews = gen.generate_reviews(200, seed=424_242)
    ids = [x + [tok.eos_token_id] for x in tok([r.text for r in reviews])["input_ids"]]
    nll, count = 0.0, 0
    with torch.no_grad():
        for x in ids:
            logits = lm(input_ids=torch.tensor([x])).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, torch.tensor(x[1:]), reduction="sum")
            count += len(x) - 1
    ppl = math.exp(float(nll) / count)
    assert ppl < 1.2 * report["policy"]["heldout_perplexity"]


@pytest.mark.slow
def test_committed_policy_writes_both_tones_and_stops() -> None:
    from rlhf_gym.envs.default_task.build import sample_continuations

    tok = AutoTokenizer.from_pretrained(task.policy_path())
    lm = AutoModelForCausalLM.from_pretrained(task.policy_path()).eval()
    rows = _read_jsonl(task.prompts_path("eval"))[:30]
    g = torch.Generator().manual_seed(1234)
    samples = [
        s
        for row in rows
        for s in sample_continuations(
            lm, tok, row["prompt"], 4, task.DEFAULTS.max_new_tokens, generator=g
        )
    ]
    tones = [lexicon_sentiment(text) for text, _ in samples]
    positive = sum(t > 0 for t in tones) / len(tones)
    negative = sum(t < 0 for t in tones) / len(tones)
    # Both tones, neither dominant: RL has something to shift.
    assert 0.25 < positive < 0.7 and 0.2 < negative < 0.7, (positive, negative)
    assert sum(ended for _, ended in samples) / len(samples) > 0.9


def test_committed_reward_model_prefers_unseen_positive_reviews() -> None:
    from rlhf_gym.rewards import RewardModel

    rows = _read_jsonl(task.prompts_path("eval"))
    pairs = gen.generate_preference_pairs(random.Random(5).sample(rows, 100), seed=987_654)
    scorer = RewardModel(task.reward_model_path(), device="cpu")
    prompts = [p["prompt"] for p in pairs]
    chosen = scorer.score(prompts, [p["chosen"] for p in pairs])
    rejected = scorer.score(prompts, [p["rejected"] for p in pairs])
    accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)
    assert accuracy >= 0.9
    # And through the plain transformers loading path, on whole reviews of either tone.
    tok = AutoTokenizer.from_pretrained(task.reward_model_path())
    rm = AutoModelForSequenceClassification.from_pretrained(task.reward_model_path()).eval()
    reviews = gen.generate_reviews(100, seed=31_337)
    with torch.no_grad():
        scores = [rm(**tok(r.text + EOS, return_tensors="pt")).logits[0, 0].item() for r in reviews]
    pos = [s for s, r in zip(scores, reviews, strict=True) if r.label == "positive"]
    neg = [s for s, r in zip(scores, reviews, strict=True) if r.label == "negative"]
    assert sum(p > n for p in pos for n in neg) / (len(pos) * len(neg)) > 0.95
    # The published threshold tells the two tones apart on these unseen reviews.
    threshold = task.positive_threshold()
    correct = sum(
        (s > threshold) == (r.label == "positive") for s, r in zip(scores, reviews, strict=True)
    )
    assert correct / len(reviews) >= 0.9
