"""Atomic checkpoints of a search: optimizer, history, best so far, RNG states.

The checkpoint is replaced after every generation by writing a temporary file, flushing it to
disk and renaming it over the old one, so a kill at any moment leaves either the previous or the
new checkpoint, never half of one. It records a fingerprint of the search-relevant config so a
run cannot silently resume under different settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evomm.errors import ConfigError

CHECKPOINT_NAME = "checkpoint.pkl"
FORMAT = "evomm-checkpoint-1"


@dataclass
class SearchState:
    """Everything the loop needs to continue where it stopped."""

    optimizer: Any
    generation: int = 0  # generations completed
    history: list[dict] = field(default_factory=list)  # one dict per evaluated candidate
    best: dict | None = None  # the best history entry so far
    rng: dict = field(default_factory=dict)


def fingerprint(config: dict) -> str:
    """A stable hash of the settings that change what a search computes."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def capture_rng() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict) -> None:
    if not state:
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save(path: Path, state: SearchState, config_fingerprint: str) -> None:
    state.rng = capture_rng()
    payload = {"format": FORMAT, "fingerprint": config_fingerprint, "state": state}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, config_fingerprint: str) -> SearchState:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            payload = pickle.load(f)
        ok = isinstance(payload, dict) and payload.get("format") == FORMAT
    except Exception as e:  # truncated or foreign file: unpickling can raise almost anything
        raise ConfigError(
            f"checkpoint {path} is corrupt or not an evomm checkpoint ({type(e).__name__}); "
            "delete it to start over, or resume from another run directory"
        ) from None
    if not ok:
        raise ConfigError(f"{path} is not an evomm checkpoint; delete it or choose another hydra.run.dir")
    if payload["fingerprint"] != config_fingerprint:
        raise ConfigError(
            f"checkpoint {path} was written by a run with a different config (search settings, "
            "models, method or task changed); resume with the same config, or start a new run directory"
        )
    state: SearchState = payload["state"]
    restore_rng(state.rng)
    return state
