"""Checks of single config values (an integer, a finite number), each naming its key."""

from __future__ import annotations

import math
from typing import Any

from evomm.errors import ConfigError


def require_int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    return value


def require_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def require_range(value: Any, key: str) -> tuple[float, float]:
    """A ``[low, high]`` pair of finite numbers with low <= high."""
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ConfigError(f"{key} must be [low, high], got {value!r}")
    low, high = (require_number(v, key) for v in value)
    if low > high:
        raise ConfigError(f"{key} must have low <= high, got {list(value)}")
    return low, high
