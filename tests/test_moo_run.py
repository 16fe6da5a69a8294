"""Runs with several objectives: per-objective records, NSGA-II's front, its files and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from evomm.cli import main as cli_main
from evomm.runner import run
from evomm.search.objectives import non_dominated
from evomm.tracking.history import read_history
from evomm.tracking.wandb_logger import NullLogger
from evomm.tracking.report import report

from conftest import REPO, compose, torchrun_train, without_seconds

FAST = ["optimizer.popsize=4", "logger=none", "final_eval.baselines=null", "final_eval.extra_tasks={}",
        "+task.tasks.english_arith.fitness_samples=8", "+task.tasks.japanese_qa.fitness_samples=6",
        "+task.tasks.english_arith.heldout_samples=12", "+task.tasks.japanese_qa.heldout_samples=6"]


class RecordingLogger(NullLogger):
    """What a run hands W&B, kept in lists."""

    def __init__(self):
        self.generations, self.candidates, self.images, self.tables = [], [], [], {}

    def log_generation(self, step, metrics):
        self.generations.append(metrics)

    def log_candidates(self, rows):
        self.candidates = rows

    def log_image(self, key, path, caption=None):
        self.images.append(key)

    def log_table(self, key, rows):
        self.tables[key] = rows


@pytest.fixture(scope="module")
def nsga_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nsga") / "run"
    cfg = compose(["experiment=demo_nsga2", *FAST, "optimizer.generations=3", "final_eval.front_size=2",
                   "save_merged=false", f"run_dir={run_dir}"])
    logger = RecordingLogger()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("evomm.runner.build_logger", lambda c, run_dir: logger)
        return {**run(cfg), "logger": logger}


def test_wandb_gets_each_objective(nsga_run):
    logger = nsga_run["logger"]
    assert len(logger.generations) == 3
    assert all({"gen/best/english_arith", "gen/best/japanese_qa"} <= set(g) for g in logger.generations)
    assert all("metric/japanese_qa/fitness" in row for row in logger.candidates) and len(logger.candidates) == 12
    assert {"pareto", "pareto_heldout"} <= set(logger.images)
    assert any(r["kind"] == "front" and "english_arith/fitness" in r for r in logger.tables["results"])


def _front(run_dir):
    return [json.loads(line) for line in (run_dir / "pareto.jsonl").read_text().splitlines()]


def test_objectives_are_recorded_per_task(nsga_run):
    history = read_history(nsga_run["run_dir"] / "history.jsonl")
    assert len(history) == 12
    for h in history:
        m = h["metrics"]
        assert m["fitness"] == pytest.approx((m["english_arith/fitness"] + m["japanese_qa/fitness"]) / 2)
        assert m["english_arith/n"] == 8 and m["japanese_qa/n"] == 6


def test_front_file_recipes_and_heldout_rows(nsga_run, tmp_path):
    run_dir = nsga_run["run_dir"]
    front = _front(run_dir)
    history = {(h["generation"], h["index"]): h for h in read_history(run_dir / "history.jsonl")}
    vectors = [[m["objectives"]["english_arith"], m["objectives"]["japanese_qa"]] for m in front]
    assert front and len(non_dominated(vectors)) == len(front) and len(set(map(tuple, vectors))) == len(front)
    every = [[h["metrics"]["english_arith/fitness"], h["metrics"]["japanese_qa/fitness"]] for h in history.values()]
    assert all(v in [every[i] for i in non_dominated(every)] for v in vectors)  # the front of all candidates
    for m in front:
        h = history[(m["generation"], m["index"])]
        assert m["objectives"]["english_arith"] == h["metrics"]["english_arith/fitness"]
        assert (run_dir / m["recipe"]).is_file()
    for name in ("pareto.png", "pareto_heldout.png", "results.json"):
        assert (run_dir / name).is_file()
    rows = json.loads((run_dir / "results.json").read_text())
    scored = [r for r in rows if r["kind"] == "front"]
    assert len(scored) == min(2, len(front)) and all("japanese_qa/fitness" in r["metrics"] for r in scored)
    # any member rebuilds with evomm merge, into the model its recipe describes
    member = front[-1]
    out = tmp_path / "member"
    assert cli_main(["merge", str(run_dir / member["recipe"]), str(out)]) == 0
    weights = load_file(str(out / "model.safetensors"))
    assert weights and all(torch.isfinite(t.float()).all() for t in weights.values())
    text = report([run_dir], plots=False)
    assert "## Pareto front" in text and member["recipe"] in text


def test_nsga2_resume_continues_exactly(tmp_path):
    """Three generations in one go == two generations, then resumed for the third."""
    args = ["experiment=demo_nsga2", *FAST, "final_eval.enabled=false", "save_merged=false"]
    full = run(compose([*args, "optimizer.generations=3", f"run_dir={tmp_path / 'full'}"]))
    run(compose([*args, "optimizer.generations=2", f"run_dir={tmp_path / 'part'}"]))
    part = run(compose([*args, "optimizer.generations=3", "resume=true", f"run_dir={tmp_path / 'part'}"]))
    assert without_seconds(part["state"].history) == without_seconds(full["state"].history)
    assert (tmp_path / "part" / "pareto.jsonl").read_text() == (tmp_path / "full" / "pareto.jsonl").read_text()


def test_nsga2_with_two_processes_gives_the_same_history(tmp_path):
    common = ["experiment=smoke_nsga2", "final_eval.enabled=false", "save_merged=false"]
    one = run(compose([*common, f"run_dir={tmp_path / 'one'}"]))
    rank0 = tmp_path / "rank0"
    torchrun_train(tmp_path, common)
    assert without_seconds(read_history(rank0 / "history.jsonl")) == without_seconds(one["state"].history)
    assert (rank0 / "pareto.jsonl").read_text() == (one["run_dir"] / "pareto.jsonl").read_text()


def test_lm_eval_fitness_run(tmp_path):
    """smoke_lm_eval: an lm-eval task scores every candidate; the results carry its metric."""
    cfg = compose(["experiment=smoke_lm_eval", "final_eval.baselines=null", "save_merged=false",
                   f"run_dir={tmp_path}"])
    out = run(cfg)
    history = read_history(tmp_path / "history.jsonl")
    assert len(history) == 8 and all(h["error"] is None for h in history)
    assert all(h["metrics"]["n"] == 8 and "exact_match" in h["metrics"] for h in history)
    assert {r["kind"] for r in out["results"]} == {"evolved", "source"}


def test_bad_multi_objective_config_is_refused_before_loading(tmp_path):
    from evomm.errors import ConfigError

    with pytest.raises(ConfigError, match="front_size"):
        run(compose(["experiment=smoke_nsga2", "final_eval.front_size=0", f"run_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="weight >= 0"):
        run(compose(["experiment=smoke_nsga2", "+task.tasks.english_arith.weight=-1", f"run_dir={tmp_path}"]))
    assert not (tmp_path / "history.jsonl").exists()


def test_nsga2_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """A run killed with SIGKILL mid-generation resumes to the same history and front."""
    import signal
    import time

    args = ["experiment=demo_nsga2", *FAST, "optimizer.generations=5", "final_eval.enabled=false", "save_merged=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def train(run_dir, *extra):
        return subprocess.Popen([sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}", *extra], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    full = train(tmp_path / "full")
    assert full.communicate(timeout=300)[0] is not None and full.returncode == 0
    killed = train(tmp_path / "killed")
    history = tmp_path / "killed" / "history.jsonl"
    deadline = time.time() + 240
    while (not history.exists() or len(history.read_text().splitlines()) <= 9) and killed.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)  # 4 candidates a generation: more than 9 lines is generation 2 in flight
    assert killed.poll() is None, "the run ended before it could be killed"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    resumed = train(tmp_path / "killed", "resume=true")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed at generation" in out
    assert without_seconds(read_history(history)) == without_seconds(read_history(tmp_path / "full" / "history.jsonl"))
    assert (tmp_path / "killed" / "pareto.jsonl").read_text() == (tmp_path / "full" / "pareto.jsonl").read_text()
