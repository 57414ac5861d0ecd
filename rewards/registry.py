"""Reward registry: names -> rewards, from built-ins, decorators, plugins and import paths.

Lookup order for :func:`get_reward` (the same shape as Gymnasium's env registry):

1. the in-process registry: built-ins plus everything registered with :func:`register_reward`;
2. the entry-point group ``rlhf_gym.rewards`` of installed distributions (third-party plugins),
   read only when a name is missing from the registry or :func:`list_rewards` is called, so
   importing :mod:`rlhf_gym.rewards` never imports a plugin;
3. a ``"module:attr"`` import path (``attr`` may be dotted).

A registered object is one of three kinds, told apart by its type and signature:

* a **reward function** (a callable whose signature names ``completions``, or takes ``*args``,
  or takes nothing but ``**kwargs``), returned as is; it takes no parameters;
* a :class:`~rlhf_gym.rewards.Reward` **subclass**, instantiated with the keyword arguments given
  to :func:`get_reward`;
* a **factory**: any other callable; called with those keyword arguments, it must return a
  reward function (the style of TRL's ``get_soft_overlong_punishment``).

Safety: a ``"module:attr"`` path the user spells out may name a reward function (returned as is)
or a ``Reward`` subclass (built with the spec's parameters). A path to any other callable (a
*factory*) is refused unless the caller opts in (``trust_import_factories=True``, the CLI's
``--trust-reward-factories``): calling an arbitrary importable callable with parameters from a
config file or a flag (``{"os:system": {"command": ...}}``) would run whatever the file says.
Registered names, built-ins and installed plugins the user names are trusted: the user put them
there. Whatever a factory returns must be a reward (a reward function or a ``Reward``).

Built-ins are registered lazily as ``"module:attr"`` strings so that importing the package does
not import torch or transformers (only ``reward_model`` needs them).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from rlhf_gym.rewards.contract import Reward, RewardFn
from rlhf_gym.rewards.errors import RewardError, UnknownRewardError

__all__ = ["ENTRY_POINT_GROUP", "get_reward", "list_rewards", "register_reward"]

#: Entry-point group a third-party distribution declares its rewards under, e.g. in its
#: pyproject.toml: ``[project.entry-points."rlhf_gym.rewards"]`` ``shouting = "pkg:shouting"``.
ENTRY_POINT_GROUP = "rlhf_gym.rewards"

_BUILTINS: dict[str, str] = {
    "exact_match": "rlhf_gym.rewards.exact_match:exact_match",
    "keyword": "rlhf_gym.rewards.keyword_match:keyword",
    "length": "rlhf_gym.rewards.length:length",
    "regex": "rlhf_gym.rewards.regex_match:regex",
    "reward_model": "rlhf_gym.rewards.reward_model:RewardModel",
}

# name -> registered object, or a "module:attr" string for a lazily imported built-in.
_registry: dict[str, object] = dict(_BUILTINS)

_T = TypeVar("_T")
_Kind = Literal["function", "instance", "class", "factory"]


def register_reward(name: str, *, overwrite: bool = False) -> Callable[[_T], _T]:
    """Decorator that registers a reward function, a ``Reward`` subclass or a factory under ``name``.

    The decorated object is returned unchanged. Registering a name that is already taken raises
    ``ValueError`` unless ``overwrite=True``; silently replacing a reward would change what a
    config file means without anyone noticing.

    Example::

        @register_reward("brevity")
        def brevity(prompts, completions, **kwargs):
            return [-len(c) / 100 for c in completions]

        @register_reward("min_words")
        def min_words(n: int = 5):  # a factory: get_reward("min_words", n=10)
            def reward(completions, **kwargs):
                return [float(len(c.split()) >= n) for c in completions]
            return reward
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"A reward name must be a non-empty string, got {name!r}.")
    if ":" in name:
        raise ValueError(
            f"Reward name {name!r} contains ':', which is reserved for 'module:attr' import paths."
        )

    def decorator(obj: _T) -> _T:
        if not callable(obj):
            raise TypeError(
                f"@register_reward({name!r}) needs a reward function, a Reward subclass or a "
                f"factory; got {type(obj).__name__}."
            )
        if name in _registry and not overwrite:
            raise ValueError(
                f"A reward named {name!r} is already registered ({_describe(_registry[name])}). "
                f"Pass overwrite=True to replace it, or choose another name."
            )
        _registry[name] = obj
        return obj

    return decorator


def list_rewards() -> list[str]:
    """Every name :func:`get_reward` accepts: built-ins, registered rewards and installed plugins."""
    return sorted(set(_registry) | set(_entry_points()))


def get_reward(
    name_or_path: str, *, trust_import_factories: bool = False, **kwargs: Any
) -> RewardFn:
    """Return a ready-to-call reward for a registered name, a plugin name or a ``"module:attr"`` path.

    ``kwargs`` parameterize factories and ``Reward`` subclasses, e.g.
    ``get_reward("keyword", keywords=["please"])`` or ``get_reward("reward_model", path=...)``.
    Passing ``kwargs`` to a plain reward function is an error (it has nothing to configure).

    Raises :class:`UnknownRewardError` (with close-match suggestions) when nothing matches.
    ``trust_import_factories``: allow a ``"module:attr"`` path to any callable to be called with
    ``kwargs`` (see the module docstring).
    """
    target = _lookup(name_or_path)
    return _build(name_or_path, target, kwargs, trust_import_factories=trust_import_factories)


# --- internals used by resolve_reward ---------------------------------------------------------


def _lookup(name_or_path: str) -> object:
    """The registered object for a name or path, importing lazily; does not instantiate it."""
    if not isinstance(name_or_path, str):
        raise TypeError(f"A reward name must be a string, got {type(name_or_path).__name__}.")
    if name_or_path in _registry:
        target = _registry[name_or_path]
        if isinstance(target, str):  # lazy built-in
            target = _import_path(target)
            _registry[name_or_path] = target
        return target
    entry_points = _entry_points()
    if name_or_path in entry_points:
        ep = entry_points[name_or_path]
        try:
            return ep.load()
        except Exception as exc:
            dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed distribution"
            raise RewardError(
                f"Reward plugin {name_or_path!r} (entry point {ep.value!r} from {dist}) failed to "
                f"load: {type(exc).__name__}: {exc}",
                plugin=name_or_path,
            ) from exc
    if ":" in name_or_path:
        return _import_path(name_or_path)
    available = list_rewards()
    suggestions = difflib.get_close_matches(name_or_path, available, n=3, cutoff=0.6)
    hint = ""
    if suggestions:
        hint = " Did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
    raise UnknownRewardError(
        f"No reward named {name_or_path!r}.{hint} Available rewards: {', '.join(available)}. "
        f"Register one with @register_reward({name_or_path!r}), install a plugin that declares "
        f"the {ENTRY_POINT_GROUP!r} entry-point group, or pass a 'module:attr' path.",
        name=name_or_path,
        suggestions=suggestions,
        available=available,
    )


def _kind(obj: object) -> _Kind:
    if isinstance(obj, type):
        return "class" if issubclass(obj, Reward) else "factory"
    if isinstance(obj, Reward):
        return "instance"
    try:
        params = inspect.signature(obj).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):  # builtins without a signature: assume a reward function
        return "function"
    if "completions" in params or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values()
    ):
        return "function"
    if params and all(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return "function"  # fn(**kwargs): everything arrives by keyword, as rewards are called
    return "factory"


def _is_import_path(name: str) -> bool:
    """Whether ``name`` resolves through a ``"module:attr"`` import, not a registry or plugin."""
    return ":" in name and name not in _registry and name not in _entry_points()


def _build(
    name: str, target: object, kwargs: dict[str, Any], *, trust_import_factories: bool = False
) -> RewardFn:
    """Turn a looked-up object into a reward function, applying ``kwargs`` where it takes them."""
    if not callable(target):
        raise TypeError(
            f"Reward {name!r} resolved to {type(target).__name__}, which is not callable."
        )
    kind = _kind(target)
    if kind in ("function", "instance"):
        if kwargs:
            raise TypeError(
                f"Reward {name!r} is a reward function, not a factory, so it takes no parameters "
                f"(got {sorted(kwargs)}). Register a factory or a Reward subclass to parameterize it."
            )
        return target  # type: ignore[return-value]
    if kind == "factory" and _is_import_path(name) and not trust_import_factories:
        raise ValueError(
            f"Reward path {name!r} names {_describe(target)}, which is neither a reward function "
            "(prompts, completions, **kwargs) nor a rlhf_gym.rewards.Reward subclass; calling it "
            f"with the spec's parameters {sorted(kwargs)} could run anything. Fix: register it "
            "with @register_reward (or install it as a plugin), or opt in with "
            "trust_import_factories=True (rlhf-gym: --trust-reward-factories)."
        )
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise TypeError(
                f"Reward {name!r} cannot be built with parameters {sorted(kwargs)}: {exc}. "
                f"It accepts {signature}."
            ) from None
    reward = target(**kwargs)
    if kind == "factory" and (not callable(reward) or _kind(reward) == "factory"):
        raise TypeError(
            f"Reward factory {name!r} returned {type(reward).__name__}; a factory must return a "
            f"reward function (prompts, completions, **kwargs) -> list[float | None]."
        )
    return reward  # type: ignore[return-value]


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    # Not cached: installing a plugin (or changing sys.path) mid-session should be seen.
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _import_path(path: str) -> object:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UnknownRewardError(
            f"Reward path {path!r} must look like 'package.module:attribute'.", name=path
        )
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise UnknownRewardError(
                f"Cannot import module {module_name!r} for reward path {path!r}: {exc}. "
                f"Is it installed, or on sys.path?",
                name=path,
            ) from exc
        raise  # the module exists but one of its own imports is missing: show that as is
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UnknownRewardError(
                f"Module {module_name!r} has no attribute {attr!r} (reward path {path!r}).",
                name=path,
            ) from None
    return obj


def _describe(obj: object) -> str:
    if isinstance(obj, str):
        return f"built-in {obj}"
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{qualname}"
