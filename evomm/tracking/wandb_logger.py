"""Weights & Biases logging.

Mode follows ``WANDB_MODE`` and defaults to ``offline``, so a machine without an account still
records the run under ``<run dir>/wandb/``; ``wandb sync <run dir>/wandb/offline-run-*`` uploads
it later. ``NullLogger`` (``logger=none``) keeps the same interface and records nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class NullLogger:
    run_dir_wandb: Path | None = None

    def log_generation(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_candidates(self, rows: list[dict]) -> None: ...

    def log_image(self, key: str, path: Path, caption: str | None = None) -> None: ...

    def log_table(self, key: str, rows: list[dict]) -> None: ...

    def log_artifact(self, path: Path, name: str, kind: str) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def finish(self) -> None: ...


class WandbLogger(NullLogger):
    def __init__(
        self,
        run_dir: Path,
        config: dict,
        project: str = "evomm",
        group: str | None = None,
        job_type: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        entity: str | None = None,
    ):
        import wandb

        self._wandb = wandb
        mode = os.environ.get("WANDB_MODE", "offline")
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            job_type=job_type,
            name=name,
            tags=tags,
            config=config,
            dir=str(run_dir),
            mode=mode,
            reinit="finish_previous",  # a multirun sweep calls run() several times in one process
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        self.run_dir_wandb = Path(run_dir) / "wandb"

    def log_generation(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_candidates(self, rows: list[dict]) -> None:
        self.log_table("candidates", rows)

    def log_image(self, key: str, path: Path, caption: str | None = None) -> None:
        self.run.log({key: self._wandb.Image(str(path), caption=caption)})

    def log_table(self, key: str, rows: list[dict]) -> None:
        if not rows:
            return
        columns = list(dict.fromkeys(k for row in rows for k in row))
        data = [[_cell(row.get(c)) for c in columns] for row in rows]
        self.run.log({key: self._wandb.Table(columns=columns, data=data)})

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        artifact = self._wandb.Artifact(name=name, type=kind)
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self.run.summary[k] = v

    def finish(self) -> None:
        self.run.finish()


def _cell(value: Any) -> Any:
    # W&B tables want one type per column; nested values are shown as text.
    if isinstance(value, (dict, list, tuple)):
        return str(value)
    return value
