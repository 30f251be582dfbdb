"""Config dataclasses from plain mappings (YAML, checkpoints): one strict builder for all."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml

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




def read_yaml(path: str | Path | None) -> dict[str, Any]:
    """The mapping in a YAML config file ({} for None); clear errors for a missing or broken file."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{p}: expected a mapping of settings, got {type(values).__name__}")
    return values


def apply_overrides(values: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML; list items by index).

    Example:
        >>> apply_overrides({"optim": {"lr": 0.1}}, ["optim.lr=0.01", "epochs=3"])
        {'optim': {'lr': 0.01}, 'epochs': 3}
    """
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        node = values
        *parents, leaf = key.strip().split(".")
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise TypeError(f"{part} is not a section")
            if isinstance(node, list):
                node[int(leaf)] = yaml.safe_load(raw)
            else:
                node[leaf] = yaml.safe_load(raw)
        except (ValueError, IndexError, TypeError) as exc:
            raise ConfigError(f"override {item!r}: no such setting ({exc})") from exc
    return values
