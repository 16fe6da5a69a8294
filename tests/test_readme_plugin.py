"""The README's "your own fitness task" example, run as written: a task class in the user's own
module, selected by `_target_`, drives a search with nothing edited inside evomm."""

import re
import sys

from evomm.runner import run
from evomm.tracking.history import read_history

from conftest import REPO, compose


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(# my_tasks\.py.*?)```", text, re.S)
    assert block, "the README shows my_tasks.py"
    return block.group(1)


def test_the_readme_task_runs_a_search_from_outside_the_package(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(readme_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    out = run(compose([
        "experiment=demo", "~task", "+task._target_=my_tasks.ShortAnswers", "+task.max_new_tokens=4",
        "final_eval.extra_tasks={}", "final_eval.baselines=null", "optimizer.generations=2", "optimizer.popsize=4",
        "logger=none", "save_merged=false", f"run_dir={tmp_path / 'run'}",
    ]))
    history = read_history(tmp_path / "run" / "history.jsonl")
    assert len(history) == 8 and all(h["error"] is None for h in history)
    assert all(0.0 <= h["fitness"] <= 1.0 for h in history)
    assert max(h["fitness"] for h in history) > 0  # the toy models do answer some sums
    assert out["results"][0]["kind"] == "evolved" and "fitness" in out["results"][0]["metrics"]
    sys.modules.pop("my_tasks", None)
