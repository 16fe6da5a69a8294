"""Mistakes a new user makes end in one clear error, before any model loads (no network here:
the hub probe is simulated)."""

import pytest

from evomm.adapters import availability
from evomm.errors import ConfigError, EvommError, ModelLoadError
from evomm.merging.methods import get_method
from evomm.recipe.recipe import check_settings, fixed_params
from evomm.runner import run

from conftest import compose

NOT_LOADABLE = "adapter.models=[nobody/not-downloaded,nobody/also-not]"


def run_smoke(tmp_path, *overrides):
    return run(compose(["experiment=smoke_llm", f"run_dir={tmp_path / 'run'}", *overrides]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+merge.params.density=1.5"], r"merge.params.density fixes a parameter that space.evolve=\['weight', 'density'\] also evolves"),
        (["+merge.params.density=[1.5,1.5]", "space.evolve=[weight]"], r"merge.params: .*'density' for source #0 = 1.5 is out of range"),
        (["+merge.params.density=[[0.5,1.5],0.5]", "space.evolve=[weight]"], r"'density' for source #0 = 1.5 is out of range"),
        (["+merge.params.density=1.5", "space.evolve=[weight]"], r"'density' for source #0 = 1.5 is out of range"),
        (["+merge.params.lambda=nan"], r"'lambda' .*must be finite"),
        (["+merge.granularty=layer"], r"unknown key merge.granularty \(did you mean space.granularity\?\); merge takes: method, params"),
        (["+merge.param={}"], r"unknown key merge.param \(did you mean merge.params\?\)"),
        (["+space.granularty=layer"], r"space 'ps' does not take granularty; its keys: granularity, .*did you mean space.granularity\?"),
        (["space=dfs", "+space.repeat=2"], r"space 'dfs' does not take repeat; its keys: repeats, w_range, x0_margin; did you mean space.repeats\?"),
        (["space.evolve=[weight,lambda]"], r"space.evolve evolves 'lambda', which has no default range: set \+space.bounds.lambda=\[low,high\]"),
    ],
)
def test_merge_section_mistakes(tmp_path, no_model_load, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_smoke(tmp_path, *overrides, NOT_LOADABLE)


def test_a_fixed_parameter_applies_to_every_source_or_one_per_source():
    assert fixed_params("ties", {"density": 0.5, "normalize": True}, 2) == {"density": [0.5, 0.5], "normalize": True}
    assert fixed_params("ties", {"density": [0.2, 0.4]}, 2) == {"density": [0.2, 0.4]}
    # a per-layer gradient of another length is one setting, for every source
    assert fixed_params("ties", {"density": [0.2, 0.4, 0.6]}, 2) == {"density": [[0.2, 0.4, 0.6]] * 2}
    check_settings(get_method("ties"), fixed_params("ties", {"density": [0.2, 0.4, 0.6]}, 2), 2, "merge.params")


def test_offline_hub_id_not_in_cache_is_refused_at_once(tmp_path, no_model_load, monkeypatch):
    monkeypatch.setattr(availability, "probe_hub", lambda *a, **k: pytest.fail("offline: no probe"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"'nobody/not-downloaded' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        run_smoke(tmp_path, NOT_LOADABLE)


@pytest.mark.parametrize(
    "answer, message",
    [
        ("missing", r"'nobody/not-downloaded' is not on the Hugging Face hub \(misspelt\?"),
        ("unreachable: timed out", r"cannot be fetched: the hub is unreachable: timed out"),
    ],
)
def test_online_hub_id_is_probed_once(tmp_path, no_model_load, monkeypatch, answer, message):
    asked = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(availability, "probe_hub", lambda ref, *a, **k: asked.append(ref) or answer)
    with pytest.raises(ModelLoadError, match=message):
        run_smoke(tmp_path, NOT_LOADABLE)
    assert asked == ["nobody/not-downloaded"]


def test_a_cached_hub_id_is_not_probed(tmp_path, monkeypatch):
    (tmp_path / "hub" / "models--me--cached" / "snapshots" / "abc").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(availability, "probe_hub", lambda *a, **k: pytest.fail("cached: no probe"))
    availability.check_available("me/cached", modality="llm")
    monkeypatch.setattr(availability, "probe_hub", lambda *a, **k: "ok")
    availability.check_available("me/on-the-hub", modality="llm")


def test_a_folder_without_config_json_is_named(tmp_path, no_model_load):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"model folder '.*weights' has no config.json"):
        run_smoke(tmp_path, f"adapter.models=[{tmp_path / 'weights'},builtin:tiny-llm-b]")


def test_single_file_sdxl_without_its_configs_names_the_key(tmp_path, monkeypatch):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"single-file SDXL checkpoint.*Set adapter.single_file_config"):
        availability.check_available(str(checkpoint), modality="sdxl")
    availability.check_available(str(checkpoint), modality="sdxl", single_file_config=str(tmp_path))


def test_every_candidate_failing_later_names_the_checkpoint(tmp_path, monkeypatch):
    from evomm.search import loop

    calls, real = [], loop.apply_recipe

    def breaks_after_generation_0(adapter, recipe):
        calls.append(1)
        if len(calls) > 4:  # popsize 4: generation 1 on
            raise RuntimeError("out of memory")
        real(adapter, recipe)

    monkeypatch.setattr(loop, "apply_recipe", breaks_after_generation_0)
    with pytest.raises(EvommError, match=r"every candidate of generation 1 failed; first error: RuntimeError: out of "
                                         r"memory; the checkpoint of the 1 finished generation\(s\) is .*checkpoint.pkl"):
        run_smoke(tmp_path, "optimizer.generations=3")


def test_a_base_that_is_also_a_source_is_scored_once(tmp_path):
    out = run_smoke(tmp_path, "adapter.base=builtin:tiny-llm-a", "optimizer.generations=1", "final_eval.baselines=null")
    names = [row["name"] for row in out["results"]]
    assert [row["kind"] for row in out["results"]] == ["evolved", "source", "source"]
    assert len(set(names)) == len(names) and not any("(base)" in n for n in names)


def test_every_candidate_failing_is_one_error_with_the_first_error(tmp_path, monkeypatch):
    def broken(adapter, recipe):
        raise RuntimeError("the merge broke\nsecond line of detail")

    monkeypatch.setattr("evomm.search.loop.apply_recipe", broken)
    with pytest.raises(EvommError) as info:
        run_smoke(tmp_path)
    message = str(info.value)
    assert "every candidate of generation 0 failed; first error: RuntimeError: the merge broke;" in message
    assert "second line" not in message and "history.jsonl" in message


def test_meaning_changing_config_differences_warn_once_and_are_recorded(tmp_path, capsys):
    import json
    import shutil

    from evomm import builtin
    from evomm.adapters.llm import LLMAdapter
    from evomm.tracking.model_card import card_text
    from evomm.recipe.recipe import Recipe

    other = tmp_path / "other-rope"
    shutil.copytree(builtin.resolve("builtin:tiny-llm-b"), other)
    config = json.loads((other / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 1000000.0
    config["rms_norm_eps"] = 1e-5
    (other / "config.json").write_text(json.dumps(config))
    for _ in range(2):
        adapter = LLMAdapter(models=["builtin:tiny-llm-a", str(other)], base="builtin:tiny-llm-base", device="cpu")
    found = adapter.notes()["config_differences"]
    assert found["rms_norm_eps"] == {"builtin:tiny-llm-a": 1e-6, str(other): 1e-5, "builtin:tiny-llm-base": 1e-6}
    assert found["rope_parameters"][str(other)]["rope_theta"] == 1000000.0
    assert "sliding_window" not in found and "hidden_act" not in found
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evomm: warning:")]
    assert len(warnings) == 1 and "rms_norm_eps" in warnings[0] and "rope_parameters" in warnings[0]

    recipe = Recipe(adapter="llm", method="linear", models=["builtin:tiny-llm-a", str(other)],
                    entries=[], notes=adapter.notes())
    card = card_text(tmp_path, recipe, [], {})
    assert "## Config differences between the sources" in card and "| `rms_norm_eps` |" in card
    same = LLMAdapter(models=["builtin:tiny-llm-a", "builtin:tiny-llm-b"], device="cpu")
    assert same.notes() == {}


@pytest.mark.parametrize("run_fixture", ["smoke_run", "vlm_run", "sdxl_run", "dfs_run"])
def test_run_outputs_hold_no_machine_cache_path(run_fixture, request):
    from evomm import builtin

    run_dir = request.getfixturevalue(run_fixture)["run_dir"]
    cache = str(builtin.evomm_home())
    written = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".md", ".jsonl")
               and "wandb" not in p.parts and ".hydra" not in p.parts]
    assert any(p.name == "best_recipe.yaml" for p in written)
    holding = [str(p.relative_to(run_dir)) for p in written if cache in p.read_text(errors="replace")]
    assert holding == []
    assert "builtin:" in (run_dir / "best_recipe.yaml").read_text()


def test_built_in_paths_are_written_by_name_and_resolved_when_loaded(tmp_path):
    from evomm import builtin
    from evomm.recipe.recipe import Recipe

    path = builtin.resolve("builtin:tiny-llm-a")
    assert builtin.portable(path) == "builtin:tiny-llm-a"
    assert builtin.portable(path + "/config.json") == "builtin:tiny-llm-a/config.json"  # a file inside
    assert builtin.resolve("builtin:tiny-llm-a/config.json") == path + "/config.json"
    assert builtin.portable("org/model") == "org/model" and builtin.portable(None) is None
    recipe = Recipe(adapter="llm", method="linear", models=[path, "org/b"], adapter_options={"x": [path]})
    recipe.save(tmp_path / "r.yaml")
    loaded = Recipe.load(tmp_path / "r.yaml")
    assert loaded.models == ["builtin:tiny-llm-a", "org/b"] and loaded.adapter_options == {"x": ["builtin:tiny-llm-a"]}


def test_export_mergekit_names_built_ins_and_local_paths_resolves_them(smoke_run, tmp_path, capsys):
    from evomm import builtin
    from evomm.cli import main as cli_main

    run_dir = smoke_run["run_dir"]
    assert cli_main(["export-mergekit", str(run_dir)]) == 0
    portable = capsys.readouterr().out
    assert "model: builtin:tiny-llm-a" in portable and "mergekit cannot read by name" in portable
    assert "--local-paths" in portable and str(builtin.evomm_home()) not in portable
    assert cli_main(["export-mergekit", str(run_dir), "--local-paths", "-o", str(tmp_path / "m.yaml")]) == 0
    local = (tmp_path / "m.yaml").read_text()
    assert f"model: {builtin.resolve('builtin:tiny-llm-a')}" in local and "builtin:" not in local


def test_push_refuses_a_recipe_naming_local_paths(tmp_path, capsys):
    from evomm.cli import main as cli_main
    from evomm.recipe.recipe import Recipe

    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    (run / "merged" / "config.json").write_text("{}")
    Recipe(adapter="llm", method="linear", models=["/home/me/models/a", "org/b"]).save(run / "best_recipe.yaml")
    assert cli_main(["push", str(run), "me/evolved", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evomm: error:") and "\n" not in err and "names local paths (/home/me/models/a)" in err


def test_push_rewrites_an_older_runs_cache_paths(smoke_run, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    from evomm import builtin
    from evomm.interop.hub import push

    run = tmp_path / "old"
    shutil.copytree(smoke_run["run_dir"], run, ignore=shutil.ignore_patterns("wandb"))
    path = builtin.resolve("builtin:tiny-llm-a")
    for name in ("best_recipe.yaml", "merged/README.md"):  # as an older evomm wrote them
        (run / name).write_text((run / name).read_text().replace("builtin:tiny-llm-a", path))

    class Api:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            pass

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    push(run, "me/evolved")
    for name in ("best_recipe.yaml", "README.md"):
        text = (run / "merged" / name).read_text()
        assert path not in text and "builtin:tiny-llm-a" in text, name


def test_push_says_sdxl_weights_go_twice_and_can_leave_the_single_file(sdxl_run, capsys):
    from evomm.cli import main as cli_main

    run_dir = sdxl_run["run_dir"]
    assert cli_main(["push", str(run_dir), "me/sdxl", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "merged.safetensors  <-" in out and "note: merged.safetensors holds the same weights" in out
    assert cli_main(["push", str(run_dir), "me/sdxl", "--dry-run", "--no-single-file"]) == 0
    out = capsys.readouterr().out
    assert "merged.safetensors" not in out and "unet/" in out


@pytest.mark.parametrize("offline", [True, False])
def test_evomm_merge_of_an_unknown_hub_id_fails_at_once(tmp_path, monkeypatch, capsys, offline):
    """A recipe naming a hub id that cannot be fetched: one line from the availability check,
    without the hub client's retries (offline: no request; online: one probe) and no model load."""
    from evomm.adapters import llm
    from evomm.cli import main as cli_main
    from evomm.recipe.recipe import Entry, Recipe

    asked = []
    monkeypatch.setattr(availability, "probe_hub", lambda ref, *a, **k: asked.append(ref) or "missing")
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(llm.LLMAdapter, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    recipe = Recipe(adapter="llm", method="ties", models=["builtin:tiny-llm-a", "nobody/not-downloaded"],
                    base="builtin:tiny-llm-base", entries=[Entry(params={"weight": [0.5, 0.5]})])
    path = recipe.save(tmp_path / "recipe.yaml")
    assert cli_main(["merge", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nobody/not-downloaded'" in err[0] and err[0].startswith("evomm: error:")
    assert asked == ([] if offline else ["nobody/not-downloaded"])
