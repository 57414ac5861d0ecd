"""Typed run configuration: one dataclass per command, turned into CLI flags and YAML keys.

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
    return data


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
