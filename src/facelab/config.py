"""Config dataclasses from plain mappings (YAML, checkpoints): one strict builder for all."""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

from facelab.errors import ConfigError


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Recursively build dataclass `cls` from a dict, rejecting unknown keys by name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_dataclass(hint, value or {}, f"{where}.{key}")
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            item = typing.get_args(hint)[0]
            kwargs[key] = [build_dataclass(item, v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def expand_data_vars(text: str) -> str:
    """Expand ${FACELAB_DATA} and other environment variables in a path."""
    from facelab.paths import data_root

    return os.path.expandvars(text.replace("${FACELAB_DATA}", str(data_root())))


