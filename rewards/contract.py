"""The reward contract: what a reward is, as a function or as a class.

A reward follows TRL's reward-function contract (``GRPOTrainer(reward_funcs=...)``) so that
functions written for TRL plug in unchanged::

    def reward_len(completions, **kwargs):
        return [-abs(20 - len(c)) for c in completions]

Rewards are always called **by keyword**: ``fn(prompts=..., completions=..., **kwargs)``, where
``kwargs`` carries

* every extra column of the dataset row (e.g. ``reference``), each as a list with one value per
  sample, and
* ``prompt_ids`` / ``completion_ids``: ``list[list[int]]`` token ids from the policy tokenizer.

A reward returns one value per completion: a finite float, or ``None`` meaning "this reward does
not apply to this sample" (see :class:`rlhf_gym.rewards.CompositeReward` for how ``None`` is
combined). Because calls are by keyword, a reward may name only the arguments it needs and take
the rest as ``**kwargs``.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol, runtime_checkable

__all__ = ["Reward", "RewardFn"]


@runtime_checkable
class RewardFn(Protocol):
    """Any callable ``(prompts, completions, **kwargs) -> list[float | None]``, called by keyword.

    ``prompts[i]`` and ``completions[i]`` are plain strings; the result has ``len(completions)``
    entries. This is the same contract as TRL's reward functions.
    """

    def __call__(
        self, prompts: list[str], completions: list[str], **kwargs: Any
    ) -> list[float | None]: ...


class Reward(abc.ABC):
    """Base class for rewards that load something once (a model, a lexicon) and score batches.

    Subclasses set ``name`` and implement ``__call__``. A subclass registered with
    :func:`rlhf_gym.rewards.register_reward` is instantiated by
    :func:`rlhf_gym.rewards.get_reward` with the keyword arguments the user passes, so its
    ``__init__`` parameters are the reward's configuration.

    Example::

        @register_reward("vocab_size")
        class VocabSize(Reward):
            name = "vocab_size"

            def __call__(self, prompts, completions, **kwargs):
                return [float(len(set(c.split()))) for c in completions]
    """

    #: Component name used in logs and in ``RewardOutput.components`` when the reward is used
    #: without a registry name. Empty means "use the class name".
    name: str = ""

    @abc.abstractmethod
    def __call__(
        self, prompts: list[str], completions: list[str], **kwargs: Any
    ) -> list[float | None]:
        """Score a batch: one value (or ``None``) per completion."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name or type(self).__name__!r})"
