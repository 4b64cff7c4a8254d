"""Nested mappings as flat names: params for MLflow ('gan.optimizer_g.lr'), metrics for MLflow,
the report and the lab tables ('gan_eval/per_digit/3/decent_rate'). One flattener, so a value
computed anywhere appears everywhere under the same name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(obj: Mapping[str, Any], sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a/b': 1} (with `prefix` 'x': {'x/a/b': 1})."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, sep, name))
        else:
            flat[name] = value
    return flat


def numbers(flat: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of a flat mapping (what MLflow takes as metrics), as floats."""
    return {
        key: float(value)
        for key, value in flat.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
