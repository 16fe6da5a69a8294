"""A registered merge method and the checks of its parameters (names, counts, ranges).

``MethodSpec.check_params`` raises a ConfigError naming the parameter, its value and the allowed
range; ``MethodSpec.merge`` fills defaults, checks, and calls the method's tensor function.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from evomm.errors import ConfigError, IncompatibleModelsError

if TYPE_CHECKING:
    from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Parameter validation
# ---------------------------------------------------------------------------------------------
def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


# name -> (predicate on a float, human-readable allowed range). Params not listed here accept
# any finite number.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "density": (lambda v: 0.0 < v <= 1.0, "0 < density <= 1"),
    "t": (lambda v: 0.0 <= v <= 1.0, "0 <= t <= 1"),
    "gamma": (lambda v: 0.0 <= v <= 1.0, "0 <= gamma <= 1"),
    "epsilon": (lambda v: 0.0 <= v < 1.0, "0 <= epsilon < 1"),
}
# Global params that are switches rather than numbers.
_BOOL_PARAMS = frozenset({"normalize", "rescale", "filter_wise"})
# Global params that name one of a few choices.
CHOICE_PARAMS: dict[str, tuple[str, ...]] = {
    # Which of the entries tied at a magnitude trim's boundary are kept (evomm.merging.topk).
    "tie_order": ("index", "mergekit"),
}


@dataclass(frozen=True)
class MethodSpec:
    """A registered merge method: its tensor function and the parameters it takes.

    ``tensor_params`` are per-source (one value per source, in source order) and
    ``global_params`` method-wide; the dict values are defaults, ``None`` meaning required.
    ``fn`` is the tensor function or its import path (``pkg.module.function``, imported at the
    first merge: the built-ins name theirs, so checking a recipe needs no torch).
    """

    name: str
    fn: Callable[..., Tensor] | str
    needs_base: bool
    tensor_params: dict[str, float | None]
    global_params: dict[str, Any]
    random: bool
    exact_sources: int | None = None
    min_sources: int = 1
    # Checks across parameters (each already in range): an error message or None. It sees the
    # per-source parameters given and every global one (defaults filled in).
    cross_check: Callable[[dict], str | None] | None = None

    # ---- validation -----------------------------------------------------------------------
    def _err(self, message: str) -> ConfigError:
        return ConfigError(f"merge method '{self.name}': {message}")

    def _check_number(self, key: str, value: Any, where: str) -> float:
        if not _is_real(value):
            raise self._err(f"parameter '{key}'{where} must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise self._err(f"parameter '{key}'{where} = {number} must be finite")
        check, allowed = _RANGES.get(key, (None, ""))
        if check is not None and not check(number):
            raise self._err(
                f"parameter '{key}'{where} = {number} is out of range; allowed: {allowed}"
            )
        return number

    def check_params(self, params: dict, n_sources: int) -> None:
        """Raise ConfigError naming the parameter, its value and the allowed range.

        Missing parameters with a default are fine (``merge`` fills them); missing required ones,
        unknown names, wrong counts and out-of-range values are errors.
        """
        if self.exact_sources is not None and n_sources != self.exact_sources:
            raise self._err(
                f"takes exactly {self.exact_sources} source model(s) besides the base, got "
                f"{n_sources}; list {self.exact_sources} model(s) or pick another method"
            )
        if n_sources < self.min_sources:
            raise self._err(f"needs at least {self.min_sources} source model(s), got {n_sources}")
        known = {**self.tensor_params, **self.global_params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise self._err(
                f"unknown parameter(s) {', '.join(repr(k) for k in unknown)}; "
                f"known: {', '.join(sorted(known)) or '(none)'}"
            )
        for key, default in known.items():
            if key not in params and default is None:
                raise self._err(f"parameter '{key}' is required")

        for key in self.tensor_params:
            if key not in params:
                continue
            values = params[key]
            if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
                raise self._err(
                    f"parameter '{key}' must be a list with one value per source ({n_sources}), "
                    f"got {values!r}"
                )
            if len(values) != n_sources:
                raise self._err(
                    f"parameter '{key}' has {len(values)} value(s) but there are {n_sources} "
                    f"source model(s); give one value per source"
                )
            for i, value in enumerate(values):
                self._check_number(key, value, f" for source #{i}")

        for key in self.global_params:
            if key not in params:
                continue
            value = params[key]
            if key in CHOICE_PARAMS:
                if value not in CHOICE_PARAMS[key]:
                    raise self._err(f"parameter '{key}' must be one of {', '.join(CHOICE_PARAMS[key])}, got {value!r}")
            elif key in _BOOL_PARAMS:
                if not _is_bool(value):
                    raise self._err(f"parameter '{key}' must be true or false, got {value!r}")
            else:
                self._check_number(key, value, "")

        if self.cross_check is not None:
            # Per-source values are checked against each other only where they were given: a
            # recipe is checked one value at a time (``evomm.recipe.recipe.check_recipe``), and
            # there a default must not stand in for the value given next to it. Merges pass
            # every parameter, defaults filled in.
            switches = {k: v for k, v in self.global_params.items() if v is not None}
            problem = self.cross_check({**switches, **params})
            if problem:
                raise self._err(problem)

    def with_defaults(self, params: dict, n_sources: int) -> dict[str, Any]:
        """``params`` with every missing defaulted parameter filled in (per-source: repeated)."""
        full = dict(params)
        for key, default in self.tensor_params.items():
            if key not in full and default is not None:
                full[key] = [default] * n_sources
        for key, default in self.global_params.items():
            if key not in full and default is not None:
                full[key] = default
        return full

    def resolved(self, params: dict, n_sources: int) -> dict[str, Any]:
        """Every parameter, defaults filled in and checked, typed for the tensor code: per-source
        lists of floats, switches as bool, choices as str, other numbers as float; ``lambda``
        as ``lambda_`` (a Python keyword)."""
        full = self.with_defaults(params, n_sources)
        self.check_params(full, n_sources)
        out: dict[str, Any] = {}
        for key, value in full.items():
            if key in self.tensor_params:
                out[key] = [float(v) for v in value]
            elif key in _BOOL_PARAMS or _is_bool(value):
                out[key] = bool(value)
            elif key in CHOICE_PARAMS:
                out[key] = str(value)
            else:
                out[_py_name(key)] = float(value)
        return out

    # ---- merging --------------------------------------------------------------------------
    def merge(
        self,
        base: Tensor | None,
        sources: Sequence[Tensor],
        params: dict,
        seed: int | None = None,
    ) -> Tensor:
        """Merge one tensor; returns a new float32 tensor of the inputs' shape."""
        sources = list(sources)
        kwargs = self.resolved(params, len(sources))
        if self.needs_base and base is None:
            raise self._err("needs a base model tensor; set a base model")
        if self.random and seed is None:
            raise self._err("is random and needs a seed; set the recipe's seed")
        shapes = {tuple(s.shape) for s in sources}
        if base is not None:
            shapes.add(tuple(base.shape))
        if len(shapes) > 1:
            raise IncompatibleModelsError(
                f"merge method '{self.name}': tensors of different shapes {sorted(shapes)}; "
                f"the models do not share an architecture"
            )

        if self.random:
            kwargs["seed"] = int(seed)
        return _function(self.fn)(base, sources, **kwargs)


def _function(fn: Callable[..., Tensor] | str) -> Callable[..., Tensor]:
    return _import_function(fn) if isinstance(fn, str) else fn


@functools.cache
def _import_function(path: str) -> Callable[..., Tensor]:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _py_name(key: str) -> str:
    """``lambda`` is a Python keyword: the tensor functions take it as ``lambda_``."""
    return "lambda_" if key == "lambda" else key
