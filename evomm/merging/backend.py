"""Which CPU merge kernels run: numba's fused kernels when numba is importable, else torch.

numba is an optional extra (``pip install "evomm[fast-cpu]"``). Both paths give the same
tensors; the fused kernels are faster on a CPU (``evomm/merging/kernels.py``). The environment
variable ``EVOMM_KERNELS`` picks one: ``auto`` (the default: numba when installed), ``torch``
(never numba), ``numba`` (an error when it is missing). It is read at every merge, so a process
can switch.
"""

from __future__ import annotations

import functools
import importlib
import os

from evomm.errors import ConfigError

ENV = "EVOMM_KERNELS"
CHOICES = ("auto", "numba", "torch")

# The task-arithmetic family: the methods the fused CPU kernel computes (and torch_path's copy of
# its arithmetic). TIES with ``rescale`` is not among them (the reference computes it).
FUSED = ("task_arithmetic", "ties", "dare_ties", "dare_linear")


def fused_method(method: str, params: dict) -> bool:
    """Whether the fused kernel computes ``method`` with these (defaulted) parameters."""
    return method in FUSED and not (method == "ties" and params.get("rescale"))


@functools.cache
def numba_available() -> bool:
    try:
        importlib.import_module("numba")
    except ImportError:
        return False
    return True


def fast_kernels() -> bool:
    """Whether the numba kernels are used for this merge."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"{ENV}={choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "torch":
        return False
    if choice == "numba" and not numba_available():
        raise ConfigError(f'{ENV}=numba but numba is not installed; pip install "evomm[fast-cpu]"')
    return numba_available()
