"""Is the default task learned? The pass/fail checks under ``rlhf-gym train``'s report.

They belong to the embedded default task (its reward model's scale, its lexicon, its base
model's fluency) and mean nothing for a user's task, so a user's run prints none. ``before`` and
``after`` are any objects with the fields of
:class:`rlhf_gym.agents.evaluation.EvalStats` (``reward_mean``, ``metrics``, ``base_ppl``,
``distinct_2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """One pass/fail statement about a run, printed under the before/after table."""

    name: str
    passed: bool
    detail: str


#: Bounds that say a run learned the preference without wrecking the language (default task).
MIN_REWARD_GAIN = 2.0
MIN_INDEPENDENT_GAIN = 0.2
MAX_PPL_RATIO = 1.5
MIN_DISTINCT2_RATIO = 0.75


def learning_checks(before: Any, after: Any) -> list[Check]:
    """Is the gain real? The reward rose, a measure the reward model never saw rose with it,
    and fluency held: perplexity under the base model and distinct-2 stayed within bounds."""
    checks = [
        Check(
            "reward rose",
            after.reward_mean - before.reward_mean >= MIN_REWARD_GAIN,
            f"{before.reward_mean:+.2f} -> {after.reward_mean:+.2f} (need +{MIN_REWARD_GAIN})",
        )
    ]
    for name in before.metrics:
        gain = after.metrics[name] - before.metrics[name]
        checks.append(Check(
            f"independent {name} rose",
            gain >= MIN_INDEPENDENT_GAIN,
            f"{before.metrics[name]:.3f} -> {after.metrics[name]:.3f} (need +{MIN_INDEPENDENT_GAIN})",
        ))  # fmt: skip
    ppl_ratio = after.base_ppl / before.base_ppl
    d2_ratio = after.distinct_2 / max(before.distinct_2, 1e-9)
    checks.append(Check("fluent (perplexity under base)", ppl_ratio <= MAX_PPL_RATIO,
                        f"{ppl_ratio:.2f}x the base's own (bound {MAX_PPL_RATIO}x)"))  # fmt: skip
    checks.append(Check("diverse (distinct-2)", d2_ratio >= MIN_DISTINCT2_RATIO,
                        f"{d2_ratio:.2f}x the base's (bound {MIN_DISTINCT2_RATIO}x)"))  # fmt: skip
    return checks


def evaluation_extras(default_task: bool) -> tuple[dict[str, Any], float]:
    """``(independent metrics, positive threshold)`` for an evaluation: the default task's
    lexicon scorers (which its reward model never saw) and its reward model's "rated positive"
    threshold; for a user's task none and 0 (their reward has no such scale)."""
    if not default_task:
        return {}, 0.0
    from rlhf_gym.envs import default_task as task

    return task.independent_metrics(), task.positive_threshold()
