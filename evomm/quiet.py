"""Quiet third-party libraries: evomm prints its own progress, one line per generation."""

from __future__ import annotations

import os
import sys


def quiet_libraries() -> None:
    """Hide per-file progress bars and info logs of transformers / diffusers / the hub client.

    Environment defaults cover a library that is imported later; a library already imported
    is told directly. Nothing is imported here: a cold `evomm merge` must not pay for diffusers.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in ("transformers", "diffusers"):
        module = sys.modules.get(name)
        if module is not None:
            module.utils.logging.disable_progress_bar()
            module.utils.logging.set_verbosity_error()
