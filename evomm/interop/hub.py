"""``evomm push``: upload a run's merged model to the Hugging Face hub.

What goes up is ``<run dir>/merged/`` (the model in its standard format and its README.md model
card) with the run's ``best_recipe.yaml`` and ``results.json`` copied in beside it, so the hub
repo alone says how the model was made and rebuilt. Every check (the folder, the repo id, a
token, offline mode) happens before anything is written or sent.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from evomm.errors import ConfigError

RUN_FILES = ("best_recipe.yaml", "results.json")  # copied from the run directory into merged/
CARD = "README.md"
_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")


def merged_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    merged = run_dir / "merged"
    saved = ("config.json", "model_index.json", "unet/config.json")  # transformers / diffusers layouts
    if not any((merged / name).is_file() for name in saved):
        raise ConfigError(
            f"{merged} holds no saved model: the run kept none (save_merged=false?); "
            f"rebuild it with `evomm merge {run_dir / 'best_recipe.yaml'} {merged}`"
        )
    if not (run_dir / "best_recipe.yaml").is_file():
        raise ConfigError(f"{run_dir / 'best_recipe.yaml'} is missing: push needs the run's recipe beside the model")
    return merged


def single_file_copy(run_dir: str | Path) -> Path | None:
    """An SDXL run's ``merged/merged.safetensors``: the diffusers folders' weights again, in one
    file (A1111 / ComfyUI); None for other runs."""
    merged = Path(run_dir) / "merged"
    single = merged / f"{merged.name}.safetensors"
    return single if single.is_file() and (merged / "model_index.json").is_file() else None


def files_to_push(run_dir: str | Path, single_file: bool = True) -> list[Path]:
    """The local files the upload sends, in repo order: merged/ (with its card), then the run files.

    ``merged/README.md`` is listed even when it is not written yet: push writes it from the run
    directory first. ``single_file=False`` leaves out an SDXL run's single-file copy.
    """
    run_dir = Path(run_dir)
    merged = merged_dir(run_dir)
    skip = set(RUN_FILES)
    single = single_file_copy(run_dir)
    if single is not None and not single_file:
        skip.add(single.name)
    files = sorted(
        p for p in merged.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(merged).parts)
        and p.relative_to(merged).as_posix() not in skip
    )
    card = merged / CARD
    if card not in files:
        files.append(card)
    files += [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    return files


def path_in_repo(run_dir: str | Path, local: Path) -> str:
    merged = Path(run_dir) / "merged"
    try:
        return local.relative_to(merged).as_posix()
    except ValueError:
        return local.name  # a run file, copied to the repo root


def find_token() -> str | None:
    """A Hugging Face token from HF_TOKEN, or from the login cache (``hf auth login``).

    Read from the environment at call time (HF_TOKEN_PATH, else $HF_HOME/token, else
    ~/.cache/huggingface/token), so a changed HF_HOME is honoured.
    """
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(var, "").strip()
        if value:
            return value
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    path = Path(os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token")).expanduser()
    if path.is_file():
        value = path.read_text().strip()
        if value:
            return value
    return None


def _write_card_from_run(run_dir: Path) -> Path:
    """A model card from what the run directory holds (the run itself writes a fuller one)."""
    from evomm.recipe.recipe import Recipe
    from evomm.tracking.model_card import write_model_card
    from evomm.tracking.report import read_results_file, read_run_config

    recipe = Recipe.load(run_dir / "best_recipe.yaml")
    rows = read_results_file(run_dir / "results.json") or []
    return write_model_card(run_dir, recipe, rows, read_run_config(run_dir))


def check_no_machine_paths(run_dir: Path) -> None:
    """Refuse a recipe that names local folders: on the hub they point nowhere. Built-in models'
    cache folders are fine (they are written as ``builtin:<name>``)."""
    from evomm.builtin import machine_paths, portable_data
    from evomm.recipe.recipe import load_yaml

    local = list(dict.fromkeys(machine_paths(portable_data(load_yaml(run_dir / "best_recipe.yaml")))))
    if local:
        raise ConfigError(
            f"{run_dir / 'best_recipe.yaml'} names local paths ({', '.join(local)}), which mean nothing on "
            "the hub and would show this machine's folders: merge models by hub id (upload the sources "
            "first) to push the recipe and its card"
        )


def _portable_run_files(run_dir: Path, merged: Path) -> None:
    """The recipe (and a card that still holds built-in models' cache paths, from an older run)
    are written with builtin:<name> references; results.json is copied as it is."""
    from evomm.builtin import evomm_home
    from evomm.recipe.recipe import Recipe

    Recipe.load(run_dir / "best_recipe.yaml").save(merged / "best_recipe.yaml")
    if (run_dir / "results.json").is_file():
        shutil.copyfile(run_dir / "results.json", merged / "results.json")
    card = merged / CARD
    if not card.is_file() or str(evomm_home() / "models") in card.read_text(errors="replace"):
        _write_card_from_run(run_dir)


def push(run_dir: str | Path, repo_id: str, private: bool = False, dry_run: bool = False,
         single_file: bool = True) -> tuple[list[Path], str | None]:
    """Upload the run's model; returns (files, repo url). ``dry_run`` sends and writes nothing;
    ``single_file=False`` leaves out an SDXL run's single-file copy of the weights."""
    run_dir = Path(run_dir)
    files = files_to_push(run_dir, single_file=single_file)
    check_no_machine_paths(run_dir)
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id):
        raise ConfigError(f"'{repo_id}' is not a hub repo id: use NAME or OWNER/NAME (letters, digits, - _ .)")
    if dry_run:
        return files, None
    token = find_token()
    if token is None:
        raise ConfigError(
            "no Hugging Face token: run `hf auth login` (`huggingface-cli login` in older versions) "
            "or set HF_TOKEN, then push again"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ConfigError("HF_HUB_OFFLINE is set: unset it to push to the hub")

    merged = run_dir / "merged"
    _portable_run_files(run_dir, merged)

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(merged),
        repo_type="model",
        commit_message=f"evomm: upload merged model from {run_dir.name}",
        ignore_patterns=[".*", "**/.*"] + ([] if single_file or single_file_copy(run_dir) is None
                                           else [single_file_copy(run_dir).name]),
    )
    return files, str(url)
