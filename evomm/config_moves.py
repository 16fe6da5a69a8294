"""Config keys that moved: the search space left the merge group for its own (``space``).

``merge`` holds the merge method only (``method``, ``params``); what the search evolves is the
``space`` group's (``ps``: granularity, evolve, bounds; ``dfs`` / ``ps_dfs``: the layer route).
An override or experiment YAML written for the old layout would otherwise fail deep inside Hydra
("Could not find 'merge/dfs'", "Key 'granularity' is not in struct") or, for a YAML, be ignored;
this module turns each into one line that names the new key. It imports nothing heavy, so
train.py can scan its arguments before Hydra composes anything or torch is imported.
"""

from __future__ import annotations

import re

from evomm.errors import ConfigError

# merge.<old key> -> space.<new key>
MOVED_KEYS: dict[str, str] = {
    "granularity": "granularity",
    "group_size": "group_size",
    "filters": "filters",
    "evolve": "evolve",
    "bounds": "bounds",
    "repeats": "repeats",
    "w_range": "w_range",
    "x0_margin": "x0_margin",
    "ps_recipe": "ps_recipe",
    "route_models": "route_models",
    "ps_fallback": "fallback_params",
}

# merge=<old option> -> space=<new option>
MOVED_OPTIONS: dict[str, str] = {"dfs": "dfs", "ps_dfs": "ps_dfs"}

_FALLBACK_NOTE = " (its method is the merge group's: merge=<method>)"
_PREFIX = re.compile(r"^(\+\+|\+|~)?")
# Values of a choice or sweep (ties,dfs / [ties,dfs] / choice(ties,dfs)) split into names.
_NAMES = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def moved_key_message(old_path: str, value: str | None = None, prefix: str = "") -> str | None:
    """The message for ``merge.<key>[.<rest>]`` if ``<key>`` moved to the space group, else None.

    ``prefix`` is the override's own (``+``, ``++``, ``~``): a deletion stays one; an addition
    becomes a plain override where the space yaml has the key, ``++`` one level deeper
    (``space.bounds.gamma`` is not in the yaml, so Hydra wants it added).
    """
    parts = old_path.split(".")
    if len(parts) < 2 or parts[0] != "merge" or parts[1] not in MOVED_KEYS:
        return None
    new = ".".join(["space", MOVED_KEYS[parts[1]], *parts[2:]])
    if prefix == "~":
        shown = f"~{new}"
    else:
        shown = ("++" if prefix and len(parts) > 2 else "") + (new if value is None else f"{new}={value}")
    note = _FALLBACK_NOTE if parts[1] == "ps_fallback" else ""
    return f"{old_path} moved to the space group: use {shown}{note}"


def moved_option_message(value: str) -> str | None:
    """The message for ``merge=<value>`` when it names a routing space (``dfs``, ``ps_dfs``)."""
    names = [n for n in _NAMES.findall(value) if n not in ("choice", "range", "glob")]
    moved = [n for n in names if n in MOVED_OPTIONS]
    if not moved:
        return None
    use = " or ".join(f"space={MOVED_OPTIONS[n]}" for n in dict.fromkeys(moved))
    return (f"merge={moved[0]} is a search space now, not a merge method: use {use} "
            f"(the merge group keeps the method, e.g. merge=ties)")


def old_override_message(arg: str) -> str | None:
    """One command-line override in the old layout -> the line that names the new key."""
    prefix = _PREFIX.match(arg).group(0)
    key, has_value, value = arg[len(prefix):].partition("=")
    key = key.strip()
    if key == "merge" and has_value:
        return moved_option_message(value)
    if key.startswith("merge."):
        return moved_key_message(key, value if has_value else None, prefix)
    return None


def check_argv(argv: list[str]) -> None:
    """Raise ConfigError for the first override written for the old layout (train.py's arguments)."""
    for arg in argv:
        if arg.startswith("-"):
            continue
        message = old_override_message(arg)
        if message:
            raise ConfigError(message)


def check_merge_section(merge: dict) -> None:
    """A config (a user's experiment YAML) that still sets space keys under ``merge:``."""
    for key in merge:
        message = moved_key_message(f"merge.{key}")
        if message:
            raise ConfigError(message)
    if merge.get("method") in MOVED_OPTIONS:
        raise ConfigError(moved_option_message(str(merge["method"])))
