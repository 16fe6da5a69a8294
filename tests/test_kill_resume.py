"""A real run killed with SIGKILL mid-generation resumes to the same result as an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time

from evomm.tracking.history import read_history

from conftest import REPO

ARGS = ["experiment=smoke_llm", "optimizer.generations=6", "final_eval.sources=false", "final_eval.baselines=null"]


def train(run_dir, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "train.py", *ARGS, f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def without_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    full = train(tmp_path / "full")
    out, err = full.communicate(timeout=300)
    assert full.returncode == 0, err[-2000:]

    killed_dir = tmp_path / "killed"
    proc = train(killed_dir)
    history = killed_dir / "history.jsonl"
    deadline = time.time() + 240
    # Kill once generation 2 is in flight: 4 candidates per generation, so > 8 lines.
    while lines(history) <= 9 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    resumed = train(killed_dir, "resume=true")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed at generation" in out
    assert without_seconds(read_history(history)) == without_seconds(read_history(tmp_path / "full" / "history.jsonl"))
    assert (killed_dir / "best_recipe.yaml").read_text() == (tmp_path / "full" / "best_recipe.yaml").read_text()


def test_ctrl_c_keeps_the_finished_generations(tmp_path):
    # Deterministic: SIGINT goes only once the first generation's checkpoint exists, and the
    # budget (1000 generations of random search, which never stops early; CMA-ES may stop on the
    # flat fitness of the untrained smoke models) is far more than the run can finish first.
    run_dir = tmp_path / "interrupted"
    proc = train(run_dir, "optimizer=random", "optimizer.generations=1000")
    deadline = time.time() + 240
    while not (run_dir / "checkpoint.pkl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted after" in out and "resume=true" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert (run_dir / "best_recipe.yaml").exists() and (run_dir / "checkpoint.pkl").exists()
