"""Weighted mixes of rewards, the validation of what each reward returns, and spec resolution.

Everything the env needs from the reward layer goes through :func:`resolve_reward`, which turns
a user's reward spec into a :class:`CompositeReward`. One composite call scores a whole batch and
calls each component exactly once, so a reward model runs one batched forward per env step no
matter how many episodes ended in it.

``None`` semantics: a reward returns ``None`` for a sample when it does not apply to it (e.g. an
exact-match reward on a row without a reference). ``None`` contributes 0 to the weighted total and
stays ``None`` in ``RewardOutput.components``, the same as TRL's ``nansum`` treatment of ``None``
rewards. If every component is ``None`` for a sample its total is ``0.0`` and a ``UserWarning`` is
issued (once per composite), because a sample nothing can score is usually a configuration bug.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_gym.rewards.contract import Reward, RewardFn
from rlhf_gym.rewards.errors import RewardError
from rlhf_gym.rewards.registry import _build, _kind, _lookup

__all__ = ["CompositeReward", "RewardOutput", "resolve_reward"]

_SPEC_FORMS = (
    "a registered reward name or 'module:attr' path (str); a reward function "
    "(prompts, completions, **kwargs) -> list[float | None]; a Reward instance or subclass; "
    "a dict {name: weight} where a weight may also be {'weight': w, **factory_kwargs}; "
    "a list of specs (weight 1 each); or a CompositeReward"
)


@dataclass
class RewardOutput:
    """Scores of one batch.

    ``total[i]`` is ``sum_k weight_k * components[name_k][i]`` with ``None`` counted as 0; a
    float64 array of shape ``(n,)``. ``components`` holds each component's raw, unweighted values
    (``None`` kept) for logging.
    """

    total: np.ndarray
    components: dict[str, list[float | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.total.shape[0])


class CompositeReward:
    """A weighted sum of reward functions, validated and scored one batch at a time.

    Args:
        rewards: the component reward functions (or ``Reward`` instances).
        weights: one finite weight per component; defaults to 1.0 each.
        names: one name per component; defaults to each function's ``__name__`` or
            ``Reward.name``. Duplicate names get ``_2``, ``_3``... suffixes so components never
            overwrite each other in logs.

    Calling it returns a :class:`RewardOutput`. Each component is called once per call, by keyword
    (``prompts=..., completions=..., **kwargs``). A component that raises or returns something
    unusable raises :class:`~rlhf_gym.rewards.RewardError` naming it.
    """

    def __init__(
        self,
        rewards: Sequence[RewardFn],
        weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        rewards = list(rewards)
        if not rewards:
            raise ValueError("A CompositeReward needs at least one reward.")
        for fn in rewards:
            if not callable(fn):
                raise TypeError(f"Reward components must be callable, got {type(fn).__name__}.")
        weights = [1.0] * len(rewards) if weights is None else list(weights)
        names = [_default_name(fn) for fn in rewards] if names is None else list(names)
        if len(weights) != len(rewards) or len(names) != len(rewards):
            raise ValueError(
                f"Got {len(rewards)} rewards, {len(weights)} weights and {len(names)} names; "
                f"they must have the same length."
            )
        self.rewards: list[RewardFn] = rewards
        self.weights: list[float] = [
            _check_weight(n, w) for n, w in zip(names, weights, strict=True)
        ]
        self.names: list[str] = _dedupe(names)
        self._warned_all_none = False

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={w:g}" for n, w in zip(self.names, self.weights, strict=True))
        return f"CompositeReward({parts})"

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any
    ) -> RewardOutput:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(
                f"Got {len(prompts)} prompts and {len(completions)} completions; they must pair up."
            )
        n = len(completions)
        total = np.zeros(n, dtype=np.float64)
        applied = np.zeros(n, dtype=bool)
        components: dict[str, list[float | None]] = {}
        for name, weight, fn in zip(self.names, self.weights, self.rewards, strict=True):
            try:
                raw = fn(prompts=prompts, completions=completions, **kwargs)
            except RewardError:
                raise
            except Exception as exc:
                raise RewardError(
                    f"Reward plugin {name!r} raised {type(exc).__name__}: {exc}", plugin=name
                ) from exc
            values = _validate(name, raw, n)
            for i, v in enumerate(values):
                if v is not None:
                    total[i] += weight * v
                    applied[i] = True
            components[name] = values
        if n and not applied.all() and not self._warned_all_none:
            self._warned_all_none = True
            missing = np.flatnonzero(~applied).tolist()
            warnings.warn(
                f"Every reward component returned None for sample(s) {missing[:10]}"
                f"{'...' if len(missing) > 10 else ''}; their total reward is 0.0. Check that "
                f"the dataset has the columns your rewards need. (Shown once per CompositeReward.)",
                UserWarning,
                stacklevel=2,
            )
        return RewardOutput(total=total, components=components)


def resolve_reward(spec: Any, *, trust_import_factories: bool = False) -> CompositeReward:
    """Turn any accepted reward spec into a :class:`CompositeReward`.

    Accepted forms::

        "length"                                   # registered name (or plugin name)
        "my_pkg.rewards:brevity"                   # import path
        my_reward_fn                               # any (prompts, completions, **kw) callable
        MyReward() / MyReward                      # Reward instance, or subclass (built with no args)
        {"reward_model": 1.0, "length": -0.01}     # weighted mix
        {"keyword": {"weight": 1.0, "keywords": ["please"]}}  # weight + factory kwargs
        ["length", my_reward_fn]                   # list: weight 1 each (nested specs flatten)
        CompositeReward(...)                       # returned as is

    Raises ``TypeError`` for anything else, listing the accepted forms. A ``"module:attr"`` path
    to a callable that is neither a reward function nor a ``Reward`` subclass is refused unless
    ``trust_import_factories=True`` (see :mod:`rlhf_gym.rewards.registry`).
    """
    trust = trust_import_factories
    if isinstance(spec, CompositeReward):
        return spec
    if isinstance(spec, str):
        reward = _build(spec, _lookup(spec), {}, trust_import_factories=trust)
        return CompositeReward([reward], names=[_name_of_spec(spec)])
    if isinstance(spec, Mapping):
        return _resolve_mapping(spec, trust)
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"An empty list is not a reward spec; expected {_SPEC_FORMS}.")
        rewards: list[RewardFn] = []
        weights: list[float] = []
        names: list[str] = []
        for item in spec:
            part = resolve_reward(item, trust_import_factories=trust)
            rewards += part.rewards
            weights += part.weights
            names += part.names
        return CompositeReward(rewards, weights, names)
    if isinstance(spec, type) and issubclass(spec, Reward):
        instance = spec()
        return CompositeReward([instance], names=[_default_name(instance)])
    if callable(spec):
        if _kind(spec) == "factory":
            raise TypeError(
                f"{_default_name(spec)!r} looks like a reward factory, not a reward: its signature "
                f"takes no 'completions'. Call it first (resolve_reward(factory(...))) or use its "
                f"registered name with parameters ({{name: {{'weight': 1.0, **params}}}})."
            )
        return CompositeReward([spec])
    raise TypeError(
        f"Unsupported reward spec of type {type(spec).__name__}; expected {_SPEC_FORMS}."
    )


# --- helpers ------------------------------------------------------------------------------------


def _resolve_mapping(spec: Mapping[Any, Any], trust: bool = False) -> CompositeReward:
    if not spec:
        raise ValueError(f"An empty dict is not a reward spec; expected {_SPEC_FORMS}.")
    rewards: list[RewardFn] = []
    weights: list[float] = []
    names: list[str] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise TypeError(
                f"Keys of a weighted reward mix must be reward names or 'module:attr' paths, got "
                f"{key!r} ({type(key).__name__})."
            )
        if isinstance(value, Mapping):
            kwargs = dict(value)
            weight = kwargs.pop("weight", 1.0)
        else:
            weight, kwargs = value, {}
        rewards.append(_build(key, _lookup(key), kwargs, trust_import_factories=trust))
        weights.append(_check_weight(key, weight))
        names.append(_name_of_spec(key))
    return CompositeReward(rewards, weights, names)


def _check_weight(name: str, weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise TypeError(
            f"The weight of reward {name!r} must be a number (or a dict {{'weight': w, ...}} with "
            f"factory parameters), got {weight!r} ({type(weight).__name__})."
        )
    if not math.isfinite(float(weight)):
        raise ValueError(f"The weight of reward {name!r} must be finite, got {weight!r}.")
    return float(weight)


def _name_of_spec(spec: str) -> str:
    # "pkg.mod:attr" -> "attr": short enough for log keys; duplicates get suffixed anyway.
    return spec.rpartition(":")[2] or spec


def _default_name(fn: Any) -> str:
    if isinstance(fn, Reward):
        return fn.name or type(fn).__name__
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    if not name or name == "<lambda>":
        name = "lambda" if name == "<lambda>" else type(fn).__name__
    return str(name)


def _dedupe(names: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        candidate, k = name, 2
        while candidate in seen:
            candidate, k = f"{name}_{k}", k + 1
        seen.add(candidate)
        out.append(candidate)
    return out


def _validate(name: str, raw: Any, n: int) -> list[float | None]:
    """Check one component's output and return it as ``list[float | None]``."""
    if isinstance(raw, np.ndarray) or (hasattr(raw, "tolist") and hasattr(raw, "shape")):
        raw = raw.tolist()  # numpy arrays and torch tensors
    if not isinstance(raw, (list, tuple)):
        raise RewardError(
            f"Reward plugin {name!r} returned {type(raw).__name__}; a reward must return a list "
            f"with one float (or None) per completion.",
            plugin=name,
        )
    if len(raw) != n:
        raise RewardError(
            f"Reward plugin {name!r} returned the wrong number of values: expected {n} (one per "
            f"completion), got {len(raw)}.",
            plugin=name,
        )
    values: list[float | None] = []
    for i, v in enumerate(raw):
        if v is None:
            values.append(None)
            continue
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:  # numpy / torch scalars
            v = v.item()
        if not isinstance(v, numbers.Real):
            raise RewardError(
                f"Reward plugin {name!r} returned a non-numeric value {v!r} "
                f"({type(v).__name__}) at index {i}; expected a float or None.",
                plugin=name,
            )
        f = float(v)
        if not math.isfinite(f):
            raise RewardError(
                f"Reward plugin {name!r} returned {f} at index {i}; rewards must be finite "
                f"(return None if the reward does not apply to a sample).",
                plugin=name,
            )
        values.append(f)
    return values
