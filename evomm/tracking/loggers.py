"""The run's logger from its config: W&B (grouped by sweep) or none."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from evomm.errors import ConfigError
from evomm.tracking.wandb_logger import NullLogger, WandbLogger


def _swept_overrides(task_overrides: list[str]) -> str:
    """This job's values of the keys the sweep varies (``seed=1,merge=ties``): its W&B job type.

    The swept keys are those given with sweep syntax (``a,b``, ``range(...)``, ...) on the
    command line; the other overrides are the same for every job and would only add noise.
    """
    swept = {
        arg.split("=", 1)[0].lstrip("+~")
        for arg in sys.argv[1:]
        if "=" in arg and not arg.startswith("hydra.") and _is_sweep(arg.split("=", 1)[1])
    }
    return ",".join(o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") in swept)[:64]


def _is_sweep(value: str) -> bool:
    """Hydra sweep syntax: a top-level comma (``a,b``; ``[a,b]`` is a list) or range/choice/glob(...)."""
    if re.match(r"(range|choice|glob|interval)\(", value):
        return True
    depth = 0
    for ch in value:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def build_logger(c: dict, run_dir: Path):
    logger = c.get("logger") or {"name": "none"}
    if logger.get("name") in (None, "none"):
        return NullLogger()
    if logger["name"] != "wandb":
        raise ConfigError(f"unknown logger '{logger['name']}'; known loggers: none, wandb")
    group, job_type = logger.get("group"), logger.get("job_type")
    try:  # a Hydra multirun sweep becomes one W&B group, one job type per override set
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            group = group or f"sweep-{Path(hc.sweep.dir).name}"
            job_type = job_type or _swept_overrides(hc.overrides.task) or "default"
    except ValueError:
        pass
    return WandbLogger(
        run_dir,
        config=c,
        project=logger.get("project", "evomm"),
        group=group or c.get("experiment_name"),
        job_type=job_type,
        name=logger.get("run_name") or f"{c.get('experiment_name') or 'run'}-{run_dir.name}",
        tags=list(logger.get("tags") or []),
        entity=logger.get("entity"),
    )
