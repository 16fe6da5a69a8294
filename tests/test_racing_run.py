"""Racing and item selection in real runs: a user's own task, determinism, kill/resume, two ranks."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from evomm.runner import run as evomm_run
from evomm.recipe.recipe import Recipe
from evomm.tracking.history import read_history
from evomm.tracking.model_card import card_text
from evomm.tracking.report import report

from conftest import REPO, compose, torchrun_train, without_seconds

# A task written by a user, outside the package: it follows the contract (per-item scores,
# num_items) and knows nothing of racing. Item k scores 1 when the merged embedding's spread
# exceeds its threshold, so candidates differ on nested sets of items: a clean paired signal.
USER_TASK = '''
import torch


class SpreadTask:
    name, modality, fitness_split, heldout_split = "user_spread", "llm", "fitness", "heldout"
    calls = []

    def __init__(self, n: int = 64):
        self.n = n

    def validate(self):
        pass

    def num_items(self, split):
        return self.n

    def evaluate(self, handle, split, items=None):
        items = list(range(self.n)) if items is None else list(items)
        SpreadTask.calls.append(items)
        level = (float(handle.model.get_input_embeddings().weight.detach().float().std()) - 0.018) / 0.016
        scores = [float((37 * k % self.n + 0.5) / self.n < level) for k in items]
        return {"fitness": sum(scores) / len(scores), "item_scores": scores}
'''

SMOKE = ["experiment=smoke_llm", "merge=task_arithmetic", "final_eval.enabled=false", "save_merged=false",
         "optimizer.popsize=8", "optimizer.generations=3"]


def user_task(tmp_path, monkeypatch):
    folder = tmp_path / "user_code"
    folder.mkdir(exist_ok=True)
    (folder / "my_spread_task.py").write_text(textwrap.dedent(USER_TASK))
    monkeypatch.syspath_prepend(str(folder))
    return importlib.import_module("my_spread_task").SpreadTask


def test_a_user_task_gets_racing_with_no_extra_code(tmp_path, monkeypatch):
    task = user_task(tmp_path, monkeypatch)

    def run(name, racing):
        cfg = compose([*SMOKE, f"run_dir={tmp_path / name}", f"fitness.racing={str(racing).lower()}"])
        cfg.task = {"_target_": "my_spread_task.SpreadTask", "n": 64}
        task.calls.clear()
        return evomm_run(cfg), list(task.calls)

    (raced, calls), (again, _) = run("raced", True), run("again", True)
    history = raced["state"].history
    assert without_seconds(history) == without_seconds(again["state"].history)  # deterministic
    stopped = [h for h in history if h["stopped_early"]]
    assert stopped and all(h["items"] < 64 for h in stopped)
    assert {len(c) for c in calls} >= {8}  # the first block
    assert all(h["items"] == 64 for h in history if not h["stopped_early"] and not h["cached"])
    for h in stopped:  # its fitness is the mean of the items it was scored on
        assert h["fitness"] == sum(h["item_scores"]) / h["items"] and len(h["item_ids"]) == h["items"]
    assert not raced["best"]["stopped_early"] and raced["best"]["items"] == 64
    full, _ = run("full", False)
    assert sum(h["items"] for h in history) < sum(h["items"] for h in full["state"].history)
    assert all(h["items_full"] == 64 for h in history if not h["cached"])
    # the best is as good as full evaluation's here: the race drops only the clearly worse
    assert raced["best"]["fitness"] >= full["best"]["fitness"] - 0.1


DEMO = ["experiment=demo", "logger=none", "final_eval.enabled=false", "save_merged=false",
        "task.fitness_samples=16", "optimizer.generations=5", "fitness.racing=true", "fitness.select=20"]


def test_selection_writes_its_file_and_a_resume_reads_it(tmp_path):
    run_dir = tmp_path / "sel"
    first = evomm_run(compose([*DEMO, "optimizer.generations=1", f"run_dir={run_dir}"]))
    record = json.loads((run_dir / "item_selection.json").read_text())
    pool = 16 + 16  # toy_skills: 16 English items, 16 of the 21 Japanese ones
    assert record["pool"] == pool and len(record["items"]) == 20 and record["reason"]
    assert record["items_scored"] == 3 * pool and len(record["models"]) == 3  # two sources and the base
    for h in first["state"].history:
        assert set(h["item_ids"]) <= set(record["items"]) and h["items_full"] == pool
    # the stratified estimate reproduces each source's score on the whole sample
    for model in record["models"]:
        scores = [record["chosen"][str(i)]["scores"][record["models"].index(model)] for i in record["items"]]
        estimate = sum(s * w for s, w in zip(scores, record["scale"])) / len(scores) + record["offset"]
        assert abs(estimate - model["pool_mean"]) < 1e-9
    text = report([run_dir], plots=False)
    assert "fitness items scored:" in text and "item selection (stratified): 20 of 32 items" in text
    card = card_text(run_dir, Recipe.load(run_dir / "best_recipe.yaml"), [], {"task": {"name": "toy_skills"}})
    assert "- fitness items scored:" in card
    os.utime(run_dir / "item_selection.json", (0, 0))
    evomm_run(compose([*DEMO, "optimizer.generations=2", "resume=true", f"run_dir={run_dir}"]))
    assert os.stat(run_dir / "item_selection.json").st_mtime == 0  # read back, not chosen again


def train(run_dir, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "train.py", *DEMO, f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_racing_sigkill_then_resume_matches_uninterrupted(tmp_path):
    full = train(tmp_path / "full")
    out, err = full.communicate(timeout=600)
    assert full.returncode == 0, err[-2000:]
    reference = read_history(tmp_path / "full" / "history.jsonl")

    killed_dir = tmp_path / "killed"
    proc = train(killed_dir)
    history = killed_dir / "history.jsonl"
    deadline = time.time() + 400
    while (not history.exists() or len(history.read_text().splitlines()) <= 17) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = train(killed_dir, "resume=true")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed at generation" in out and "read from item_selection.json" in out
    assert without_seconds(read_history(history)) == without_seconds(reference)
    assert (killed_dir / "best_recipe.yaml").read_text() == (tmp_path / "full" / "best_recipe.yaml").read_text()


def test_racing_with_two_ranks_gives_the_same_history_as_one(tmp_path):
    common = [*DEMO, "optimizer.generations=2"]
    one = evomm_run(compose([*common, f"run_dir={tmp_path / 'one'}"]))
    rank0 = tmp_path / "rank0"
    torchrun_train(tmp_path, common, timeout=600)
    two = read_history(rank0 / "history.jsonl")
    assert without_seconds(two) == without_seconds(read_history(one["run_dir"] / "history.jsonl"))
    assert (rank0 / "item_selection.json").read_text() == (one["run_dir"] / "item_selection.json").read_text()
