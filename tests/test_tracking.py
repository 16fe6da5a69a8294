"""What a run hands W&B (offline) and how a Hydra multirun sweep is grouped.

W&B keeps an offline run in ``<run dir>/wandb/offline-run-*/``: logged media (tables, images) as
files under ``files/media`` and every record in the binary ``run-<id>.wandb`` log. We read the
media files and look for the logged keys and the group name in that log.
"""

import json
import os
import subprocess
import sys

import pytest

from evomm.runner import run

from conftest import REPO, compose


def offline_runs(run_dir):
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert runs, f"no W&B offline run under {run_dir / 'wandb'}"
    return runs


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    run(compose(["experiment=smoke_llm", f"run_dir={run_dir}", "logger=wandb"]))
    return run_dir


def test_wandb_received_every_key(logged_run):
    (run,) = offline_runs(logged_run)
    log = next(run.glob("run-*.wandb")).read_bytes()
    for key in [b"gen/best", b"gen/mean", b"gen/std", b"optimizer/sigma", b"best_so_far",
                b"best_recipe", b"smoke_llm"]:  # metrics, the recipe artifact, the group
        assert key in log, key
    media = run / "files" / "media"
    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in (media / "table").glob("*.table.json")}
    assert set(tables) >= {"candidates", "results"}
    assert len(tables["candidates"]["data"]) == 8  # every candidate of 2 generations x 4
    assert {"fitness", "seconds", "error", "generation"} <= set(tables["candidates"]["columns"])
    assert [row[1] for row in tables["results"]["data"]][0] == "evolved"
    assert any(p.name.startswith("fitness") for p in (media / "images").glob("*.png"))


def test_multirun_sweep_is_one_wandb_group(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=smoke_llm", "logger=wandb", "seed=0,1",
         "optimizer.generations=1", "final_eval.enabled=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    logs = [next(r.glob("run-*.wandb")).read_bytes()
            for job in ("0", "1") for r in offline_runs(tmp_path / "sweep" / job)]
    assert len(logs) == 2
    group = b"sweep-sweep"  # sweep-<name of the sweep directory>
    assert all(group in log for log in logs)
    assert b"seed=0" in logs[0] and b"seed=1" in logs[1]  # the job type names the overrides
