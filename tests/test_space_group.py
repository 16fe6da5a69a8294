"""The search space is its own config group (space=ps|dfs|ps_dfs); merge holds the method only.

Old overrides and old experiment YAMLs get one line naming the new key, before anything loads;
space.evolve null is the method's own parameters; a user's space kind is a plugin; checkpoints
written before the change still resume (same fingerprint).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose
from evomm.config_checks import validate_config
from evomm.config_moves import check_argv
from evomm.errors import ConfigError
from evomm.run_setup import search_fingerprint
from evomm.runner import run
from evomm.search import checkpoint
from evomm.search.space_kinds import ParameterSpaceKind, space_kind

NOT_LOADABLE = "adapter.models=[nobody/not-downloaded,nobody/also-not]"  # a load would raise ModelLoadError


def resolved(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose(overrides), resolve=True)


# ---- old overrides -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "arg, new",
    [
        ("merge=dfs", "use space=dfs"),
        ("merge=ps_dfs", "use space=ps_dfs"),
        ("merge=ties,dfs", "use space=dfs"),
        ("merge=choice(ties,ps_dfs)", "use space=ps_dfs"),
        ("merge.granularity=layer", "use space.granularity=layer"),
        ("+merge.granularity=layer", "use space.granularity=layer"),
        ("++merge.granularity=layer", "use space.granularity=layer"),
        ("~merge.granularity", "use ~space.granularity"),
        ("merge.granularity=model,layer", "use space.granularity=model,layer"),
        ("merge.group_size=2", "use space.group_size=2"),
        ("merge.filters=[mlp]", "use space.filters=[mlp]"),
        ("merge.evolve=[weight]", "use space.evolve=[weight]"),
        ("merge.bounds={weight:[0,1]}", "use space.bounds={weight:[0,1]}"),
        ("merge.bounds.weight=[0,1.5]", "use space.bounds.weight=[0,1.5]"),
        ("+merge.bounds.gamma=[0,0.1]", "use ++space.bounds.gamma=[0,0.1]"),
        ("merge.repeats=2", "use space.repeats=2"),
        ("merge.w_range=[0,3]", "use space.w_range=[0,3]"),
        ("merge.x0_margin=0.1", "use space.x0_margin=0.1"),
        ("merge.ps_recipe=run/best_recipe.yaml", "use space.ps_recipe=run/best_recipe.yaml"),
        ("merge.route_models=[a/b]", "use space.route_models=[a/b]"),
        ("merge.ps_fallback={method:ties,weight:1.0}", "use space.fallback_params={method:ties,weight:1.0}"),
        ("merge.ps_fallback.weight=0.5", "use space.fallback_params.weight=0.5"),
    ],
)
def test_old_override_names_the_new_key(arg, new):
    with pytest.raises(ConfigError) as e:
        check_argv(["experiment=smoke_llm", arg, "seed=1"])
    message = str(e.value)
    assert new in message and "\n" not in message
    assert message.startswith("merge")  # names the old key too


@pytest.mark.parametrize("arg", ["merge=ties", "merge=dare_ties,ties", "merge.params.lambda=1.0", "+merge.params={}",
                                 "space=dfs", "space.granularity=layer", "hydra.run.dir=out/merge.granularity", "-m"])
def test_current_overrides_pass_the_scan(arg):
    check_argv([arg])


@pytest.mark.parametrize("args, new", [
    (["merge=dfs"], "use space=dfs"),
    (["-m", "merge=ties,ps_dfs", "seed=0,1"], "use space=ps_dfs"),
    (["+merge.granularity=layer"], "use space.granularity=layer"),
])
def test_train_py_refuses_an_old_override_before_anything_loads(tmp_path, args, new):
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "train.py", "experiment=smoke_llm", *args, f"hydra.run.dir={run_dir}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evomm: error: ") and new in lines[0]
    assert done.stdout == ""
    assert not run_dir.exists() and not (tmp_path / "sweep").exists()  # Hydra never composed, nothing ran


# ---- old keys in a YAML --------------------------------------------------------------------------

@pytest.mark.parametrize("body, new", [
    ("merge:\n  granularity: layer\n", "merge.granularity moved to the space group: use space.granularity"),
    ("merge:\n  evolve: [weight]\n  bounds: {weight: [0.0, 1.0]}\n", "use space.evolve"),
    ("merge:\n  ps_fallback: {method: ties, weight: 1.0}\n", "use space.fallback_params"),
    ("merge:\n  method: dfs\n", "use space=dfs"),
])
def test_a_users_experiment_yaml_with_old_merge_keys_is_refused(tmp_path, no_model_load, body, new):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "legacy.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /adapter: llm\n  - override /merge: ties\n"
        "experiment_name: legacy\nadapter:\n  models: [nobody/not-downloaded, nobody/also-not]\n"
        "  base: nobody/base\n" + body)
    cfg = compose([f"hydra.searchpath=[file://{tmp_path}]", "experiment=legacy", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=new):
        run(cfg)
    assert not (tmp_path / "run").exists()


# ---- what the parameter space evolves by default -------------------------------------------------

@pytest.mark.parametrize("merge, evolve", [
    ("merge=ties", ["weight", "density"]),
    ("merge=dare_ties", ["weight", "density"]),
    ("merge=dare_linear", ["weight", "density"]),
    ("merge.method=breadcrumbs", ["weight", "density"]),
    ("merge.method=della", ["weight", "density"]),
    ("merge=linear", ["weight"]),
    ("merge=task_arithmetic", ["weight"]),
    ("merge=slerp", ["t"]),
])
def test_evolve_null_is_the_methods_own_parameters_with_their_default_ranges(merge, evolve):
    c = resolved(["experiment=smoke_llm", merge])
    assert c["space"]["evolve"] is None
    kind = space_kind(c)
    view = kind.merge_view(c)
    assert view["evolve"] == evolve
    ranges = {"weight": [0.0, 1.0], "density": [0.1, 1.0], "t": [0.0, 1.0]}
    assert view["bounds"] == {p: ranges[p] for p in evolve}


def test_bounds_missing_from_the_space_take_the_range_of_their_name(tmp_path):
    c = resolved(["experiment=smoke_llm", "space.bounds.weight=[0.0,1.5]", "~space.bounds.density"])
    _, space = space_kind(c).build(c)
    assert space.evolve == ["weight", "density"]
    assert space.bounds == {"weight": (0.0, 1.5), "density": (0.1, 1.0)}


def test_merge_linear_with_the_default_space_needs_no_other_override():
    from evomm.search.build import build_search

    c = resolved(["experiment=smoke_llm", "merge=linear"])
    validate_config(c)
    _, space = build_search(c)
    assert space.evolve == ["weight"] and space.dim == 2  # one weight per source, one unit
    assert space.template.method == "linear"


def test_the_demo_evolves_weight_and_density_in_their_old_bounds():
    c = resolved(["experiment=demo"])
    assert c["merge"] == {"method": "dare_ties", "params": {}}
    view = space_kind(c).merge_view(c)
    assert view["evolve"] == ["weight", "density"]
    assert view["bounds"] == {"weight": [0.0, 1.0], "density": [0.1, 1.0]}


@pytest.mark.parametrize("overrides, message", [
    (["space=ps_dfs", "merge=linear"], r"space.fallback_params.density: merge method 'linear' does not take it.*"
                                       "'~space.fallback_params.density'"),
    (["space.granularity=block"], "unknown space.granularity 'block'"),
    (["space.bounds.t=[0.0,1.5]", "merge=slerp", "adapter.models=[nobody/one]"], r"t must lie in \[0, 1\]"),
    (["space=dfs", "space.x0_margin=0.9"], r"space.x0_margin must lie in \(0, 0.5\]"),
    (["+merge.granularity=layer"], "use space.granularity"),
])
def test_space_mistakes_fail_before_any_model_loads(tmp_path, no_model_load, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(compose(["experiment=smoke_llm", f"run_dir={tmp_path / 'run'}", NOT_LOADABLE, *overrides]))


def test_ps_dfs_with_linear_and_its_weight_only_is_valid():
    validate_config(resolved(["experiment=smoke_llm", "space=ps_dfs", "merge=linear", "~space.fallback_params.density"]))


# ---- a user's own space kind ---------------------------------------------------------------------

class CappedWeights:
    """A user's space kind: one weight per source for the whole model, at most ``cap``."""

    def __init__(self, cap: float = 0.5):
        self.cap = cap

    def validate(self, c: dict) -> None:
        if not 0 < self.cap <= 1:
            raise ConfigError(f"space.cap must lie in (0, 1], got {self.cap}")

    def build(self, c: dict):
        return ParameterSpaceKind(evolve=["weight"], bounds={"weight": [0.0, self.cap]}).build(c)


USER_SPACE = ["~space", f"+space._target_={__name__}.CappedWeights"]


def test_a_users_space_kind_is_loaded_through_plugins_and_searched(tmp_path):
    out = run(compose(["experiment=smoke_llm", *USER_SPACE, "+space.cap=0.25", f"run_dir={tmp_path / 'run'}",
                       "optimizer.generations=1", "final_eval.enabled=false", "save_merged=false"]))
    history = out["state"].history
    assert history and all(set(h["params"]) == {"all/weight/src0", "all/weight/src1"} for h in history)
    assert all(0.0 <= w <= 0.25 for h in history for w in h["params"].values())


@pytest.mark.parametrize("extra, message", [
    (["+space.cap=2.0"], r"space.cap must lie in \(0, 1\]"),
    (["+space.capp=0.2"], r"space 'test_space_group.CappedWeights' does not take capp; its keys: cap; did you mean space.cap\?"),
])
def test_a_users_space_kind_validates_before_any_model_loads(tmp_path, no_model_load, extra, message):
    with pytest.raises(ConfigError, match=message):
        run(compose(["experiment=smoke_llm", *USER_SPACE, *extra, f"run_dir={tmp_path / 'run'}", NOT_LOADABLE]))


def test_a_users_space_section_is_part_of_the_fingerprint():
    one = search_fingerprint(resolved(["experiment=smoke_llm", *USER_SPACE, "+space.cap=0.25"]))
    two = search_fingerprint(resolved(["experiment=smoke_llm", *USER_SPACE, "+space.cap=0.5"]))
    assert one != two


# ---- checkpoints written before the space group still resume -------------------------------------

def old_fingerprint(c: dict, old_merge: dict) -> str:
    """run_setup.search_fingerprint as it was, given the merge section as it was written then."""
    relevant = {k: c.get(k) for k in ("adapter", "optimizer", "task", "seed")}
    relevant["merge"] = old_merge
    relevant["optimizer"] = {k: v for k, v in c["optimizer"].items() if k not in ("generations", "max_evals")}
    return checkpoint.fingerprint(relevant)


# The merge sections these runs composed to before the space group, written out literally.
OLD_SHAPES = [
    (["experiment=demo"], {
        "method": "dare_ties", "granularity": "model", "group_size": 1, "filters": ["self_attn", "mlp"],
        "evolve": ["weight", "density"], "bounds": {"weight": [0.0, 1.0], "density": [0.1, 1.0]}, "params": {}}),
    (["experiment=smoke_llm", "merge=linear", "space.granularity=layer", "space.group_size=2"], {
        "method": "linear", "granularity": "layer", "group_size": 2, "filters": ["self_attn", "mlp"],
        "evolve": ["weight"], "bounds": {"weight": [0.0, 1.0]}, "params": {}}),
    (["experiment=smoke_llm", "space.evolve=[weight]", "space.bounds.weight=[0.0,2.0]"], {
        "method": "ties", "granularity": "model", "group_size": 1, "filters": ["self_attn", "mlp"],
        "evolve": ["weight"], "bounds": {"weight": [0.0, 2.0], "density": [0.1, 1.0]}, "params": {}}),
    (["experiment=smoke_sdxl"], {
        "method": "linear", "granularity": "layer", "group_size": 1, "filters": ["self_attn", "mlp"],
        "evolve": ["weight"], "bounds": {"weight": [0.0, 1.0]}, "params": {}}),
    (["experiment=smoke_llm", "space=dfs"], {"method": "dfs", "repeats": 3, "w_range": [0.0, 2.0], "x0_margin": 0.25}),
    (["experiment=smoke_llm", "space=ps_dfs", "space.route_models=[builtin:tiny-llm-a]"], {
        "method": "ps_dfs", "ps_recipe": None, "ps_fallback": {"method": "ties", "weight": 1.0, "density": 0.5},
        "route_models": ["builtin:tiny-llm-a"], "repeats": 3, "w_range": [0.0, 2.0], "x0_margin": 0.25}),
]


@pytest.mark.parametrize("overrides, old_merge", OLD_SHAPES)
def test_an_unchanged_run_keeps_its_checkpoint_fingerprint(overrides, old_merge):
    c = resolved(overrides)
    assert search_fingerprint(c) == old_fingerprint(c, old_merge)


def test_a_changed_space_changes_the_fingerprint():
    base = search_fingerprint(resolved(["experiment=demo"]))
    assert search_fingerprint(resolved(["experiment=demo", "space.granularity=layer"])) != base
    assert search_fingerprint(resolved(["experiment=demo", "space.bounds.density=[0.2,1.0]"])) != base
