"""Is a model reference loadable? Answered in seconds, before any model loads.

The hub client retries a missing or unreachable repository for about half a minute before it
gives up, and transformers reports a folder without ``config.json`` as a missing ``model_type``
key. These checks find both cases first and say what to change:

- a local folder must hold the file its loader reads first (``config.json`` for a text model or
  a VLM; ``model_index.json`` or ``unet/config.json`` for an SDXL pipeline);
- a hub id already in the local Hugging Face cache is taken as it is;
- any other hub id with ``HF_HUB_OFFLINE`` set is refused at once (it cannot be fetched);
- otherwise one request to the hub's model API, with a short timeout and no retries, tells a
  misspelt or private id and an unreachable hub apart.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from evomm import builtin
from evomm.errors import ModelLoadError

PROBE_TIMEOUT_S = 5.0
# The hub repository whose configs diffusers fetches for a single-file SDXL checkpoint.
SDXL_CONFIG_REPO = "stabilityai/stable-diffusion-xl-base-1.0"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def in_hub_cache(repo_id: str) -> bool:
    """A snapshot of ``repo_id`` is in the local Hugging Face cache (what offline loading uses)."""
    # Read from the environment now: huggingface_hub fixes its cache folder when imported.
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    cache = Path(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")).expanduser()
    snapshots = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def probe_hub(repo_id: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """One request to the hub's model API: ``"ok"``, ``"missing"`` or ``"unreachable: <why>"``."""
    from huggingface_hub import constants, get_token

    request = urllib.request.Request(f"{constants.ENDPOINT.rstrip('/')}/api/models/{repo_id}")
    token = get_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return "ok"
    except urllib.error.HTTPError as e:
        if e.code in (401, 404):  # the hub answers 401 for a repository it will not show you
            return "missing"
        if e.code == 403:  # gated: it exists; the loader says how to get access
            return "ok"
        return f"unreachable: HTTP {e.code} from {constants.ENDPOINT}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"unreachable: {reason} ({constants.ENDPOINT}, {timeout:g} s)"


def hub_problem(ref: str) -> str | None:
    """Why the hub id ``ref`` cannot be fetched now (offline and not cached, misspelt, no
    network), as a phrase; None when it can."""
    if in_hub_cache(ref):
        return None
    if hub_offline():
        return "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    answer = probe_hub(ref)
    if answer == "missing":
        return "is not on the Hugging Face hub (misspelt? a private repository needs hf auth login or HF_TOKEN)"
    if answer != "ok":
        return f"cannot be fetched: the hub is {answer}"
    return None


def check_hub_id(ref: str, what: str = "model") -> None:
    """Refuse a hub id that cannot be fetched, saying what to do instead."""
    problem = hub_problem(ref)
    if problem is None:
        return
    fix = ("download it first (hf download {ref}), point to a local folder, or unset HF_HUB_OFFLINE"
           if hub_offline() else "check the id and the network, or point to a local folder")
    raise ModelLoadError(f"{what} '{ref}' {problem}: {fix.format(ref=ref)}")


def _missing_file(folder: Path, modality: str | None) -> str | None:
    if modality in ("llm", "vlm") and not (folder / "config.json").is_file():
        return "config.json (a save_pretrained folder holds it)"
    if modality == "sdxl" and not any(
        (folder / name).is_file() for name in ("model_index.json", "unet/config.json", "config.json")
    ):
        return "model_index.json or unet/config.json (a diffusers folder holds one)"
    return None


def check_available(ref: str, what: str = "model", modality: str | None = None,
                    single_file_config: str | None = None) -> None:
    """Fail fast on a reference that the loader would fail on slowly or cryptically."""
    if builtin.is_builtin(ref):
        return
    path = Path(ref).expanduser()
    if path.is_dir():
        missing = _missing_file(path, modality)
        if missing:
            raise ModelLoadError(f"{what} folder '{ref}' has no {missing}; is it the model's folder?")
        return
    if path.is_file():
        if modality == "sdxl" and ref.endswith((".safetensors", ".ckpt")) and not single_file_config:
            _check_single_file_configs(ref)
        return
    if ref.count("/") == 1:
        check_hub_id(ref, what)


def check_all_available(refs: list[tuple[str, str]], modality: str | None = None,
                        single_file_config: str | None = None) -> None:
    """``check_available`` for each (reference, what it is), each distinct pair once."""
    for ref, what in dict.fromkeys(refs):
        check_available(ref, what, modality, single_file_config)


def _check_single_file_configs(ref: str) -> None:
    """diffusers reads a single file's component configs from the hub unless told where they are."""
    problem = hub_problem(SDXL_CONFIG_REPO)
    if problem is not None:
        raise ModelLoadError(
            f"'{ref}' is a single-file SDXL checkpoint: diffusers reads its component configs from "
            f"{SDXL_CONFIG_REPO}, which {problem}. Set adapter.single_file_config to a diffusers SDXL "
            "folder (or a cached hub id) that holds them"
        )
