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


def test_a_user_adapter_is_recorded_by_import_path_and_rebuilt(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from evomm.cli import main as cli_main
    from evomm.recipe.recipe import Recipe

    (tmp_path / "my_adapters.py").write_text(
        "from evomm.adapters.llm import LLMAdapter\n\n\n"
        "class MyLLM(LLMAdapter):\n    name = 'my_llm'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run(compose([
        "experiment=smoke_llm", "adapter.name=null", "+adapter._target_=my_adapters.MyLLM",
        "optimizer.generations=1", "final_eval.enabled=false", "logger=none", f"run_dir={tmp_path / 'run'}",
    ]))
    recipe = Recipe.load(tmp_path / "run" / "best_recipe.yaml")
    assert recipe.adapter == "my_adapters.MyLLM"
    assert cli_main(["merge", str(tmp_path / "run" / "best_recipe.yaml"), str(tmp_path / "rebuilt")]) == 0
    ours = load_file(tmp_path / "run" / "merged" / "model.safetensors")
    again = load_file(tmp_path / "rebuilt" / "model.safetensors")
    assert ours.keys() == again.keys() and all((ours[k] == again[k]).all() for k in ours)
    sys.modules.pop("my_adapters", None)
