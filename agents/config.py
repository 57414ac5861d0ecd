"""Typed run configuration: one dataclass per command, turned into CLI flags and YAML keys.

Every command's config lives here (:class:`TrainConfig`, :class:`EvaluateConfig`,
:class:`GenerateConfig`, :class:`TrainRMConfig`), with the env section ``train`` and
``evaluate`` share (:class:`EnvSection`, :func:`env_arguments`). The module imports no torch,
so building the CLI (and ``rlhf-gym rewards``) stays light.

As in CleanRL, a run is described by one dataclass whose fields carry their own help text
(``field(metadata={"help": ...})``). The CLI is generated from it, a YAML file may set any field,
and flags given on the command line win over the file. Unknown YAML keys are an error that names
them, because a misspelt key silently ignored is a run wasted.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


def help_of(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("help", ""))


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one ``--flag`` per field of ``cls``; every default is ``None`` so unset flags are known."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        base, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f"{help_of(f)} (default: {default!r})"
        if base is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        elif is_list:
            parser.add_argument(flag, dest=f.name, nargs="+", type=base, default=None, help=text)
        elif base is Any:
            parser.add_argument(flag, dest=f.name, type=_json_or_str, default=None, help=text)
        else:
            choices = (
                typing.get_args(hints[f.name])
                if typing.get_origin(hints[f.name]) is typing.Literal
                else None
            )
            parser.add_argument(
                flag, dest=f.name, type=base, choices=choices, default=None, help=text
            )


def build_config(cls: type[C], args: argparse.Namespace, config_file: str | Path | None) -> C:
    """Defaults, then the YAML file, then explicit flags."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_yaml(config_file, cls))
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return cls(**values)


def load_yaml(path: str | Path, cls: type[Any]) -> dict[str, Any]:
    """Read a YAML mapping of field values, rejecting keys ``cls`` does not have."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ValueError(f"{where}: invalid YAML ({getattr(err, 'problem', err)})") from err
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a config file must be a YAML mapping of option: value")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"{path}: unknown config key(s) {', '.join(hints)}. Known keys: {', '.join(known)}"
        )
    types_ = typing.get_type_hints(cls)
    for key, value in data.items():
        problem = _type_problem(types_[key], value)
        if problem:
            raise ValueError(f"{path}: {key}: {problem}, got {value!r}")
    return data


def _type_problem(tp: Any, value: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``tp`` (scalars and lists of them), or None.

    YAML gives typed values; a string where a number belongs would otherwise fail later with a
    message that names neither the file nor the key."""
    optional = type(None) in typing.get_args(tp)
    if value is None:
        return None if optional else "a value is required"
    base, is_list = _base_type(tp)
    if is_list:
        items = value if isinstance(value, list) else None
        if items is None:
            return f"expected a list of {getattr(base, '__name__', base)}"
        return next(
            (_type_problem(base, item) for item in items if _type_problem(base, item)), None
        )
    if typing.get_origin(tp) is typing.Literal:
        choices = typing.get_args(tp)
        return None if value in choices else f"expected one of {', '.join(map(repr, choices))}"
    if base is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "expected an integer"
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "expected a number"
    if base is str:
        return None if isinstance(value, str) else "expected a string"
    return None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _json_or_str(text: str) -> Any:
    """Flags typed ``Any`` (e.g. a reward spec) accept JSON (``'{"length": -0.1}'``) or a plain string."""
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"invalid JSON {text!r}: {err}") from err
    return text


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(scalar type, is a list) of an annotation like ``int | None`` or ``list[str] | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])
        return Any, False
    if origin in (list, Sequence, tuple):
        return typing.get_args(tp)[0], True
    if origin is typing.Literal:
        return type(typing.get_args(tp)[0]), False
    return tp, False


# ------------------------------------------------------------------------------ commands
@dataclass
class EnvSection:
    """The env a command runs on, shared by ``train`` and ``evaluate`` (one set of flags and YAML
    keys, one builder of env arguments: :func:`env_arguments`). Unset fields: the embedded
    default task's."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "causal LM path or hub id; default: the embedded default policy (evaluate: "
            "the adapter's base)"
        },
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer path or hub id; default: the model's"}
    )
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "prompt file; default: the default task's (evaluate: its held-out prompts)"
        },
    )
    reward: Any = field(
        default=None,
        metadata={
            "help": "reward spec: a name, module:attr, or JSON mix; default: the default task's reward model"
        },
    )
    max_prompt_tokens: int | None = field(
        default=None, metadata={"help": "longest prompt in tokens (left-truncated)"}
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "longest response in tokens"}
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "system turn put first in every chat-templated prompt that has none"},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "allow custom model code from the model directory"}
    )
    reward_bound: float | None = field(
        default=1e4,
        metadata={"help": "a reward beyond +-this stops the run (null in YAML: no check)"},
    )
    reward_clip: bool = field(
        default=False, metadata={"help": "clip rewards to +-reward_bound instead of stopping"}
    )
    trust_reward_factories: bool = field(
        default=False,
        metadata={
            "help": "let a module:attr reward in --reward or the config name any callable, called "
            "with the spec's parameters (off: reward functions and Reward subclasses only)"
        },
    )


def env_arguments(cfg: EnvSection, *, tokenizer: str | None = None) -> dict[str, Any]:
    """``TextGenerationEnv`` keyword arguments from a command's env section; unset fields are
    left out so the env's defaults (the default task's) apply. ``tokenizer`` overrides the
    section's (``evaluate`` uses the adapter's base model)."""
    kwargs: dict[str, Any] = {
        "trust_remote_code": cfg.trust_remote_code,
        "trust_reward_factories": cfg.trust_reward_factories,
        "reward_bound": cfg.reward_bound,
        "reward_clip": cfg.reward_clip,
    }
    source = tokenizer or cfg.tokenizer or cfg.model
    if source is not None:
        kwargs["tokenizer"] = source
    for key in ("prompts", "reward", "max_prompt_tokens", "max_new_tokens", "system_prompt"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    return kwargs


def is_default_task(cfg: EnvSection) -> bool:
    """Whether a command runs the embedded default task (its prompts and reward model), the only
    task whose checks, thresholds and independent metrics mean anything."""
    return cfg.reward is None and cfg.prompts is None


@dataclass
class TrainConfig(EnvSection):
    """Everything ``rlhf-gym train`` needs; each field is a ``--flag`` and a YAML key."""

    algo: str = field(
        default="ppo", metadata={"help": "RL algorithm by name (see `rlhf-gym algos`)"}
    )
    eval_prompts: str | None = field(
        default=None,
        metadata={
            "help": "held-out prompt file; default: the default task's, else eval_fraction of prompts"
        },
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "share of prompts held out when no eval_prompts file is given"},
    )
    total_timesteps: int = field(
        default=16384, metadata={"help": "environment steps (tokens generated) to train for"}
    )
    num_envs: int = field(default=32, metadata={"help": "episodes generated in parallel"})
    group_size: int | None = field(
        default=None,
        metadata={
            "help": "answers per prompt (envs per group, in rounds); unset: 4 for grpo and rloo, "
            "1 in rounds for reinforce_pp, 1 (no rounds) for the SB3 algorithms"
        },
    )
    n_steps: int | None = field(
        default=None,
        metadata={"help": "rollout steps per env per update (unset: the algorithm's LM default)"},
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "minibatch size (unset: the algorithm's LM default)"}
    )
    n_epochs: int | None = field(
        default=None,
        metadata={
            "help": "passes over each rollout (num_iterations of the group algorithms; unset: "
            "the algorithm's default)"
        },
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "optimizer learning rate (unset: the algorithm's default)"}
    )
    grad_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "backpropagate a minibatch this many whole sequences at a time (gradient "
            "accumulation: memory follows the chunk; unset: the algorithm's default, the whole "
            "minibatch for PPO and A2C, 8 for the group algorithms)"
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "modules to adapt; default: peft's choice for the architecture"},
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the base weights: float32, bfloat16 or float16 (unset: the "
            "checkpoint's); LoRA weights and the value head stay float32"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute activations in backward (less memory for long answers)"},
    )
    logit_memory_mb: float = field(
        default=256.0,
        metadata={"help": "budget (MiB) of one [tokens, vocab] block in training and KL passes"},
    )
    kl_coef: float = field(
        default=0.5,
        metadata={
            "help": "KL penalty beta (initial value when adaptive); 0.5 keeps the default task "
            "fluent on every seed tried"
        },
    )
    kl_target: float | None = field(
        default=None, metadata={"help": "target KL per episode; enables the adaptive controller"}
    )
    kl_horizon: int = field(default=10000, metadata={"help": "adaptive KL horizon in steps"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto"})
    output_dir: str = field(default="runs/default", metadata={"help": "run directory"})
    eval_every: int = field(
        default=4096,
        metadata={"help": "evaluate on held-out prompts every N steps (0: only before and after)"},
    )
    eval_episodes: int = field(default=128, metadata={"help": "held-out prompts per evaluation"})
    checkpoint_every: int = field(default=4096, metadata={"help": "checkpoint every N steps"})
    resume: bool = field(
        default=False, metadata={"help": "continue from the last checkpoint in output_dir"}
    )
    progress_bar: bool = field(default=True, metadata={"help": "show a progress bar"})
    num_samples: int = field(
        default=4, metadata={"help": "sample generations shown before and after"}
    )


@dataclass
class EvaluateConfig(EnvSection):
    """Options of ``rlhf-gym evaluate``: held-out evaluation of base and adapter side by side."""

    adapter: str | None = field(
        default=None,
        metadata={"help": "adapter directory (a run's adapter/); omit to evaluate the base only"},
    )
    episodes: int = field(default=128, metadata={"help": "held-out prompts to sample"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    output: str | None = field(default=None, metadata={"help": "write the report as JSON here"})


@dataclass
class GenerateConfig:
    """Options of ``rlhf-gym generate``: sample completions from a (adapted) model."""

    prompt: list[str] | None = field(
        default=None, metadata={"help": "prompt text(s); default: a few held-out prompts"}
    )
    adapter: str | None = field(default=None, metadata={"help": "adapter directory"})
    model: str | None = field(
        default=None,
        metadata={"help": "base causal LM; default: the adapter's base or the default policy"},
    )
    max_new_tokens: int = field(default=32, metadata={"help": "tokens to generate"})
    chat_template: bool | None = field(
        default=None,
        metadata={
            "help": "render --prompt as a user turn with the tokenizer's chat template "
            "(unset: when the tokenizer has one)"
        },
    )
    num: int = field(default=4, metadata={"help": "completions when no --prompt is given"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})


@dataclass
class TrainRMConfig:
    """Options of ``rlhf-gym train-rm``: a reward model from preference pairs (Bradley-Terry)."""

    pairs: str = field(default="", metadata={"help": "JSONL of {prompt, chosen, rejected}"})
    model: str = field(
        default="", metadata={"help": "sequence-classification (or causal LM) path to start from"}
    )
    output_dir: str = field(
        default="runs/reward_model", metadata={"help": "where to save the reward model"}
    )
    epochs: int = field(default=2, metadata={"help": "passes over the pairs"})
    learning_rate: float = field(default=5e-5, metadata={"help": "learning rate"})
    batch_size: int = field(default=16, metadata={"help": "pairs per batch"})
    eval_fraction: float = field(default=0.1, metadata={"help": "pairs held out for accuracy"})
    seed: int = field(default=0, metadata={"help": "random seed"})
