"""Every validation rule fires before any model loads, with a message that says what to change."""

import json

import pytest

from evomm.runner import run
from evomm.errors import ConfigError, UnknownNameError

from conftest import compose

NOT_LOADABLE = "adapter.models=[nobody/not-downloaded,nobody/also-not]"  # a load would raise ModelLoadError


def run_smoke(tmp_path, *overrides):
    return run(compose(["experiment=smoke_llm", f"run_dir={tmp_path / 'run'}", *overrides]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["space=dfs", "adapter=sdxl", "task=clip_score", "adapter.models=[a/b,c/d]"], "routes through decoder stacks"),
        (["task=ja_vg_vqa", NOT_LOADABLE], "scores vlm models, but the llm adapter gives llm models"),
        (["+final_eval.extra_tasks.clip_score={}", NOT_LOADABLE], "extra_tasks.clip_score 'clip_score' scores sdxl"),
        (["+adapter.dtyp=bfloat16", NOT_LOADABLE], "adapter 'llm' does not take dtyp; its keys: models, base, dtype"),
        (["+optimizer.popsiz=4", NOT_LOADABLE], "optimizer 'cmaes' does not take popsiz; its keys: popsize"),
        (["+task._target_=no_such_pkg.Task", NOT_LOADABLE], "cannot import module 'no_such_pkg'"),
        (["space=dfs", "space.repeats=0", NOT_LOADABLE], "space.repeats must be >= 1"),
        (["space=dfs", "space.w_range=[1.5,2.0]", NOT_LOADABLE], "must contain 1.0"),
        (["space=dfs", "adapter.models=[nobody/only-one]"], "needs model A and at least one more"),
        (["space.bounds.weight=[1.0,0.0]", NOT_LOADABLE], "low <= high"),
        (["space.group_size=0", NOT_LOADABLE], "space.group_size must be >= 1"),
        (["space.granularity=block", NOT_LOADABLE], "unknown space.granularity"),
        (["optimizer.sigma0=0", NOT_LOADABLE], "sigma0 must be > 0"),
        (["seed=-1", NOT_LOADABLE], "seed must be >= 0"),
        (["adapter.base=null", NOT_LOADABLE], "needs adapter.base"),
        (["merge=slerp", NOT_LOADABLE], "exactly 1 model"),
        (["+final_eval.extra_tasks.chess={}", NOT_LOADABLE], "unknown task 'chess'"),
        (["task.fitness_samples=0", NOT_LOADABLE], "fitness_samples must be a positive integer"),
        (["+task.colour=red", NOT_LOADABLE], "task 'toy_arith' does not take colour; its keys: "),
        (["resample_fitness=sometimes", NOT_LOADABLE], "resample_fitness must be true or false"),
        (["task=ja_vlm_bench", "adapter=vlm", "~task.fitness_samples", "resample_fitness=true", NOT_LOADABLE], "cannot redraw"),
    ],
)
def test_rule(tmp_path, overrides, message):
    with pytest.raises((ConfigError, UnknownNameError), match=message):
        run_smoke(tmp_path, *overrides)


def test_dataset_record_missing_a_field_is_named(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "fitness.jsonl").write_text(json.dumps({"question": "問: 1 たす 1 は?", "answer": "2"}) + "\n")
    (data / "heldout.jsonl").write_text(json.dumps({"question": "問: 2 たす 2 は?"}) + "\n")
    with pytest.raises(ConfigError, match=r"heldout.jsonl, line 1: missing field 'answer'"):
        run_smoke(tmp_path, f"task.data_dir={data}", NOT_LOADABLE)


def test_heldout_fitness_is_refused_unless_allowed(tmp_path):
    with pytest.raises(ConfigError, match="allow_heldout_fitness"):
        run_smoke(tmp_path, "task=ja_vlm_bench", "adapter=vlm", "task.dataset=builtin:tiny-vlm-bench",
            "adapter.models=[builtin:tiny-llava,builtin:tiny-text-llm]", "adapter.base=builtin:tiny-text-base")


def test_corrupt_checkpoint_is_reported(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(ConfigError, match="corrupt or not an evomm checkpoint"):
        run_smoke(tmp_path, "resume=true")
