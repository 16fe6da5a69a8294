"""Loading helpers shared by the adapters: references, dtypes, devices, shape checks.

torch is imported only by the helpers that return torch objects: the streamed ``evomm merge``
uses the others without importing it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from evomm import builtin
from evomm.errors import ConfigError, IncompatibleModelsError, ModelLoadError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "float16", "bfloat16")


def check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype '{name}'; known dtypes: {', '.join(DTYPES)}")
    return name


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, check_dtype(name))


def pick_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None


def check_ref(ref: Any, what: str = "model") -> None:
    """Cheap existence check of a model reference, before anything loads."""
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{what} reference must be a hub id or a path, got {ref!r}")
    if builtin.is_builtin(ref):
        name = ref[len(builtin.PREFIX):].partition("/")[0]
        if name not in builtin.builtin_names():
            raise ConfigError(
                f"unknown built-in {what} '{ref}'; known: {', '.join('builtin:' + n for n in builtin.builtin_names())}"
            )
        return
    path = Path(ref).expanduser()
    if ref.startswith(("/", "./", "../", "~")) and not path.exists():
        raise ModelLoadError(f"{what} path '{ref}' does not exist")
    if not path.exists() and ref.count("/") != 1:
        raise ModelLoadError(
            f"{what} '{ref}' is neither an existing path nor a hub id of the form 'owner/name'"
        )


def resolve_ref(ref: str) -> str:
    """Built-in references become paths (built on first use); others are returned unchanged."""
    return builtin.resolve(ref)


def portable_name_or_path(folder: Path) -> None:
    """Saved configs record where their model was loaded from (``_name_or_path``); for a built-in
    model that is this machine's cache folder: write its ``builtin:`` name instead."""
    import json

    for path in Path(folder).rglob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and builtin.portable(data.get("_name_or_path")) != data.get("_name_or_path"):
            data["_name_or_path"] = builtin.portable(data["_name_or_path"])
            path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def load_or_explain(ref: str, loader: Callable[[str], Any], what: str = "model") -> Any:
    """Call ``loader(ref)`` and turn loading failures into an error that names the reference."""
    try:
        return loader(ref)
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (
            " (no network: download it first, or point to a local folder)"
            if os.environ.get("HF_HUB_OFFLINE") == "1"
            else ""
        )
        raise ModelLoadError(f"cannot load {what} '{ref}': {first}{hint}") from None


def compare_shapes(
    reference_name: str,
    reference: dict[str, tuple[int, ...]],
    other_name: str,
    other: dict[str, tuple[int, ...]],
    max_listed: int = 5,
) -> None:
    """Raise IncompatibleModelsError naming the tensors whose names or shapes differ."""
    missing = sorted(set(reference) - set(other))
    extra = sorted(set(other) - set(reference))
    differ = sorted(k for k in set(reference) & set(other) if tuple(reference[k]) != tuple(other[k]))
    if not (missing or extra or differ):
        return
    parts = []
    if differ:
        shown = ", ".join(f"{k} {tuple(reference[k])} vs {tuple(other[k])}" for k in differ[:max_listed])
        more = f" and {len(differ) - max_listed} more" if len(differ) > max_listed else ""
        parts.append(f"shapes differ for {shown}{more}")
    if missing:
        parts.append(f"missing in '{other_name}': {', '.join(missing[:max_listed])}")
    if extra:
        parts.append(f"not in '{reference_name}': {', '.join(extra[:max_listed])}")
    raise IncompatibleModelsError(
        f"'{other_name}' does not match '{reference_name}': " + "; ".join(parts)
        + ". Merge models of the same architecture and size."
    )
