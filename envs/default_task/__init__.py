"""The embedded default task: small assets that let the main job run offline on a laptop CPU.

No machine here reaches a model hub, so the project ships, built by a committed deterministic
script (``python -m rlhf_gym.envs.default_task.build``), everything one RLHF run needs:

- ``prompts_train.jsonl`` / ``prompts_eval.jsonl``: neutral openings of product reviews
  ("I bought this tent last week and"), with a ``prompt`` column and a ``topic`` column;
- ``policy/``: a small GPT-2-style causal LM pre-trained on a synthetic review corpus, which
  continues a neutral opening positively or negatively about half the time each;
- ``reward_model/``: a GPT-2 sequence classifier trained on (prompt, chosen, rejected) pairs,
  preferring positive reviews;
- ``tokenizer/``: the byte-level BPE tokenizer both models use (also saved inside each);
- ``preferences.jsonl`` and ``build_report.json``: the reward model's training pairs and the
  build's figures (perplexity, reward-model accuracy, sizes, seed, time).

Everything loads through the ordinary Hugging Face calls (``AutoTokenizer.from_pretrained``,
``AutoModelForCausalLM.from_pretrained``, ``AutoModelForSequenceClassification.from_pretrained``)
on the paths returned here, which is how the env and agents use it; real users pass a hub id or
their own path instead. :mod:`~rlhf_gym.envs.default_task.lexicon` holds an independent
sentiment scorer for evaluating RL runs on this task.

This module imports nothing heavy (no torch, no transformers): the env imports it for its
defaults.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhf_gym.envs.default_task.lexicon import (
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    lexicon_positive,
    lexicon_reward,
    lexicon_sentiment,
)

ASSETS_DIR: Path = Path(__file__).resolve().parent / "assets"
"""Where the built assets live (inside the installed package)."""

BUILD_COMMAND = "python -m rlhf_gym.envs.default_task.build"


@dataclass(frozen=True)
class DefaultTaskConfig:
    """Env settings the default task was built for."""

    max_prompt_tokens: int = 16
    """Every default prompt fits in this many tokens (the build checks it)."""
    max_new_tokens: int = 24
    """Every generator review body plus EOS fits in this many tokens, so a well-trained policy
    finishes its review before the env truncates it."""


DEFAULTS = DefaultTaskConfig()
"""The env's defaults when it runs the default task."""


class DefaultTaskAssetsMissing(FileNotFoundError):
    """The default task's assets have not been built (or were built somewhere else)."""


def _require(path: Path) -> Path:
    if not path.exists():
        raise DefaultTaskAssetsMissing(
            f"default task asset not found: {path}. The default task's assets are built, not "
            f"downloaded: run `{BUILD_COMMAND}` (a few minutes on a CPU) to create them in "
            f"{ASSETS_DIR}, or pass your own model/tokenizer/prompt paths instead."
        )
    return path


def tokenizer_path() -> Path:
    """Directory of the default tokenizer (``AutoTokenizer.from_pretrained`` loads it)."""
    return _require(ASSETS_DIR / "tokenizer")


def policy_path() -> Path:
    """Directory of the default policy LM and its tokenizer (``AutoModelForCausalLM``)."""
    return _require(ASSETS_DIR / "policy")


def reward_model_path() -> Path:
    """Directory of the default reward model and its tokenizer
    (``AutoModelForSequenceClassification``, one logit: higher means preferred)."""
    return _require(ASSETS_DIR / "reward_model")


def prompts_path(split: Literal["train", "eval"] = "train") -> Path:
    """The default prompt set's JSONL file for ``split`` (columns ``id``, ``prompt``, ``topic``)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return _require(ASSETS_DIR / f"prompts_{split}.jsonl")


def independent_metrics() -> dict[str, Callable[..., list[float]]]:
    """Reward specs to *log* (never train on) when running the default task.

    Both read the lexicon of :mod:`~rlhf_gym.envs.default_task.lexicon`, which the reward model
    never saw: ``lexicon_sentiment`` (mean polarity in [-1, 1]) and ``lexicon_positive`` (share
    of completions leaning positive). If the reward rises and these do not, the policy is
    exploiting the reward model rather than writing more positive reviews.
    """
    return {"lexicon_sentiment": lexicon_reward, "lexicon_positive": lexicon_positive}


def positive_threshold() -> float:
    """The default reward model's score above which a completion counts as a positive review.

    The reward model was trained on pairs, so its scores have no fixed zero; the build puts the
    threshold halfway between the median scores of held-out positive and negative generator
    reviews (``reward_model.positive_threshold`` in ``build_report.json``, where the accuracy of
    this cut is reported too).
    """
    report = json.loads(_require(ASSETS_DIR / "build_report.json").read_text(encoding="utf-8"))
    return float(report["reward_model"]["positive_threshold"])


__all__ = [
    "ASSETS_DIR",
    "DEFAULTS",
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "DefaultTaskAssetsMissing",
    "DefaultTaskConfig",
    "independent_metrics",
    "lexicon_positive",
    "lexicon_reward",
    "lexicon_sentiment",
    "policy_path",
    "positive_threshold",
    "prompts_path",
    "reward_model_path",
    "tokenizer_path",
]
