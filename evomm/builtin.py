"""Built-in models: real checkpoints that evomm builds (or ships) and then loads by path.

A model reference ``builtin:<name>`` in a config resolves to a folder under
``$EVOMM_HOME/models/<name>`` (default ``~/.cache/evomm``). The first time it is asked for, the
registered builder writes a standard checkpoint there (save_pretrained / diffusers format); from
then on it is loaded like any user model. Recipes, model cards and exports write the
``builtin:<name>`` reference, not the machine's cache path (``portable``), so they mean the same
on every machine; ``evomm merge`` resolves it again.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from evomm.errors import UnknownNameError
from evomm.registry import Registry

PREFIX = "builtin:"

# name -> builder(out_dir) that writes a complete checkpoint into out_dir
BUILDERS: Registry[Callable[[Path], None]] = Registry("built-in model")

# name -> writer(out_dir) that writes a complete data set folder (``builtin:<name>`` data sets)
DATASETS: Registry[Callable[[Path], None]] = Registry("built-in data set")

# Modules that register builders; imported on first use so that importing evomm stays light.
_BUILDER_MODULES = ["evomm.toy.builtins", "evomm.toy.vlm_builtins", "evomm.toy.tiny_vlm", "evomm.toy.tiny_sdxl",
                    "evomm.toy.tiny_vqa", "evomm.toy.lm_eval_tasks"]


def evomm_home() -> Path:
    return Path(os.environ.get("EVOMM_HOME", Path.home() / ".cache" / "evomm"))


def is_builtin(ref: str) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def _load_builders() -> None:
    for module in _BUILDER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:  # a module not written yet must not break the others
            if e.name != module:
                raise


def builtin_names() -> list[str]:
    _load_builders()
    return BUILDERS.names()


def resolve(ref: str) -> str:
    """Return a loadable path for ``builtin:<name>`` (building it once); other refs unchanged."""
    if not is_builtin(ref):
        return ref
    name, _, inside = ref[len(PREFIX):].partition("/")  # builtin:<name>/<file>: a file inside it
    _load_builders()
    builder = BUILDERS.get(name)
    folder = build_once(evomm_home() / "models" / name, builder)
    return str(folder / inside) if inside else str(folder)


def portable(ref):
    """``builtin:<name>`` for the cache folder of a built-in model (``builtin:<name>/<file>`` for
    a file inside it); any other value unchanged."""
    if not isinstance(ref, str) or is_builtin(ref) or not ref:
        return ref
    models = evomm_home() / "models"
    for root in dict.fromkeys((str(models), os.path.realpath(models))):
        if ref.startswith(root + os.sep):
            inside = ref[len(root) + 1:].rstrip(os.sep)
            if inside:
                return PREFIX + inside.replace(os.sep, "/")
    return ref


def portable_data(value):
    """A copy of plain data (dicts, lists, strings) with every built-in model path made portable."""
    if isinstance(value, dict):
        return {k: portable_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_data(v) for v in value]
    return portable(value)


def machine_paths(value, found=None) -> list[str]:
    """The strings in plain data that are local paths (absolute, home or relative), built-ins excepted
    (they are written as ``builtin:<name>``): what must not leave this machine."""
    found = [] if found is None else found
    if isinstance(value, dict):
        for v in value.values():
            machine_paths(v, found)
    elif isinstance(value, list):
        for v in value:
            machine_paths(v, found)
    elif isinstance(value, str) and not is_builtin(value) and value.startswith(("/", "~", "./", "../")):
        found.append(value)
    return found


def resolve_dataset(ref: str) -> str:
    """The folder of a ``builtin:<name>`` data set (written once under $EVOMM_HOME/data)."""
    name = ref[len(PREFIX):]
    _load_builders()
    if name not in DATASETS:
        known = ", ".join(PREFIX + n for n in DATASETS.names())
        raise UnknownNameError(f"unknown built-in data set '{ref}'; known: {known}")
    return str(build_once(evomm_home() / "data" / name, DATASETS.get(name)))


def build_once(out: Path, writer: Callable[[Path], None]) -> Path:
    """Run ``writer(folder)`` once for ``out``; later calls find it complete and return at once.

    The writer fills a temporary sibling that is renamed into place, so a killed build never
    leaves half a model or data set behind.
    """
    if (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        writer(tmp)
        (tmp / ".complete").write_text("ok\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
