"""End to end: the real conf/ composed with small overrides, run in-process like train.py does."""

import json
import os
import subprocess
import sys

import pytest

from evomm.runner import run
from evomm.errors import ConfigError, UnknownNameError
from evomm.tracking.history import read_history

from conftest import REPO, compose, without_seconds


def smoke(run_dir, *overrides):
    return run(compose(["experiment=smoke_llm", f"run_dir={run_dir}", *overrides]))


def test_wandb_offline_run_is_recorded(smoke_run):
    assert list((smoke_run["run_dir"] / "wandb").glob("offline-run-*")), "W&B offline run files"


def test_history_has_one_line_per_candidate(smoke_run):
    history = read_history(smoke_run["run_dir"] / "history.jsonl")
    assert len(history) == 4 * 2  # popsize x generations in smoke_llm
    assert [(h["generation"], h["index"]) for h in history] == [(g, i) for g in range(2) for i in range(4)]
    for h in history:
        assert set(h) >= {"generation", "index", "params", "fitness", "metrics", "seconds", "error"}
        assert set(h["params"]) == {"all/weight/src0", "all/weight/src1", "all/density/src0", "all/density/src1"}
    best = max(h["fitness"] for h in history)
    assert smoke_run["best"]["fitness"] == best


def test_results_table_lists_every_comparison(smoke_run):
    rows = json.loads((smoke_run["run_dir"] / "results.json").read_text())
    kinds = [(r["kind"], r["name"]) for r in rows]
    assert kinds[0] == ("evolved", "evolved")
    assert sum(k == "source" for k, _ in kinds) == 3  # two experts and the base
    assert {n for k, n in kinds if k == "baseline"} == {"linear", "ties", "dare_ties"}
    assert all("fitness" in r["metrics"] for r in rows)
    table = (smoke_run["run_dir"] / "results.md").read_text()
    assert "| evolved | evolved |" in table and "| dare_ties | baseline |" in table


def test_resume_continues_to_the_same_result(tmp_path, smoke_run):
    run_dir = tmp_path / "resumed"
    smoke(run_dir, "optimizer.generations=1", "final_eval.enabled=false")
    assert len(read_history(run_dir / "history.jsonl")) == 4
    with pytest.raises(ConfigError, match="resume=true"):
        smoke(run_dir)
    out = smoke(run_dir, "resume=true")
    uninterrupted = read_history(smoke_run["run_dir"] / "history.jsonl")
    resumed = read_history(run_dir / "history.jsonl")
    assert without_seconds(resumed) == without_seconds(uninterrupted)
    assert (run_dir / "best_recipe.yaml").read_text() == (smoke_run["run_dir"] / "best_recipe.yaml").read_text()
    assert out["state"].generation == 2


def test_resume_refuses_a_different_config(tmp_path):
    run_dir = tmp_path / "r"
    smoke(run_dir, "optimizer.generations=1", "final_eval.enabled=false")
    with pytest.raises(ConfigError, match="different config"):
        smoke(run_dir, "resume=true", "merge=dare_ties")


@pytest.mark.parametrize(
    "override, error, message",
    [
        ("merge.method=frobnicate", UnknownNameError, "known merge methods: .*dare_ties"),
        ("adapter.name=audio", UnknownNameError, "built-in adapters: llm, sdxl, vlm"),
        ("task.name=chess", UnknownNameError, "built-in tasks: .*toy_arith"),
        ("optimizer.name=adam", UnknownNameError, "built-in optimizers: cmaes, nsga2, random"),
        ("optimizer.popsize=1", ConfigError, "optimizer.popsize must be >= 2"),
        ("optimizer.generations=-1", ConfigError, "optimizer.generations must be >= 0"),
        ("space.bounds.density=[0.0,1.0]", ConfigError, "density must lie in"),
        ("final_eval.baselines.ties.density=1.5", ConfigError, "density must lie in"),
        ("space.evolve=[weight,gamma]", ConfigError, "does not take"),
    ],
)
def test_bad_config_fails_before_any_model_loads(tmp_path, override, error, message):
    # Models that would fail to load prove the check comes first: a load would raise ModelLoadError.
    with pytest.raises(error, match=message):
        smoke(tmp_path / "bad", override, "adapter.models=[nobody/not-downloaded,nobody/also-not]")


def test_missing_model_path_is_named(tmp_path):
    with pytest.raises(Exception, match="no-such-model"):
        smoke(tmp_path / "bad", f"adapter.models=[{tmp_path}/no-such-model]")


def test_train_py_runs_as_a_script(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "train.py", "experiment=smoke_llm", f"hydra.run.dir={tmp_path / 'cli'}",
         "optimizer.generations=1", "final_eval.sources=false", "final_eval.baselines=null"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gen 1/1" in done.stdout and "| evolved | evolved |" in done.stdout
    assert "| baseline |" not in done.stdout  # final_eval.baselines=null: no hand-set merges
    assert (tmp_path / "cli" / "best_recipe.yaml").exists()
    bad = subprocess.run(
        [sys.executable, "train.py", "experiment=smoke_llm", f"hydra.run.dir={tmp_path / 'bad'}", "optimizer.popsize=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["evomm: error: optimizer.popsize must be >= 2, got 1"]


def test_resample_fitness_redraws_the_sample_every_generation(tmp_path, monkeypatch):
    from evomm.tasks.toy_arith import ToyArithTask

    drawn = []
    real = ToyArithTask.resample
    monkeypatch.setattr(ToyArithTask, "resample", lambda self, r: drawn.append(r) or real(self, r))
    out = smoke(tmp_path / "r", "resample_fitness=true", "optimizer.generations=2", "final_eval.enabled=false")
    assert sorted(set(drawn)) == [0, 1]
    assert out["state"].best["sample"] == 1  # the best was re-scored on the last sample
    kept = json.loads((tmp_path / "r" / "best.json").read_text())
    assert (kept["sample"], kept["fitness"]) == (1, out["state"].best["fitness"])
    from evomm.tracking.report import report

    assert f"best fitness: {kept['fitness']:.4f} (generation {kept['generation']}" in report([tmp_path / "r"], plots=False)
